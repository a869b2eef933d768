//! Rate limiting: where a rate-limit decision is made.
//!
//! Every policy is `{ requests, window, burst }` and admits a request only when both hold:
//! - **sliding-window ceiling**: over any interval of length `window`, at most `requests`
//!   admissions. It is kept as an exact log of admission times, with no fixed windows and so
//!   no double burst at a window edge;
//! - **burst (GCRA)**: a virtual-scheduling token bucket with capacity `burst` and emission
//!   interval `window / requests` (rounded up). At most `burst` requests pass back to back,
//!   then admissions resume at the steady rate.
//!
//! All policies that apply to a request are checked together. A request is admitted only if
//! every one admits it, and a denied request commits nothing to any of them.
//! `retry_after` is exact: with nothing else competing, a retry at that moment is admitted.
//!
//! [`Limiter`] picks the store: [`MemoryLimiter`] (one process, the default) or
//! [`RedisLimiter`] (shared by replicas; see `redis.rs`).

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

mod redis;
pub use self::redis::{OnError, RedisLimiter, RedisSettings, StoreUnavailable};

/// The configured rate-limit store.
pub enum Limiter {
    Memory {
        limiter: MemoryLimiter,
        epoch: Instant,
    },
    Redis(Box<RedisLimiter>),
}

impl Limiter {
    pub fn memory() -> Self {
        Limiter::Memory {
            limiter: MemoryLimiter::new(),
            epoch: Instant::now(),
        }
    }

    /// The Redis backend, when one is configured (it also stores signature nonces).
    pub fn redis(&self) -> Option<&RedisLimiter> {
        match self {
            Limiter::Redis(r) => Some(r),
            Limiter::Memory { .. } => None,
        }
    }

    /// Checks and commits every `(key, policy)` pair together.
    pub async fn check(
        &self,
        checks: &[(String, &Policy)],
    ) -> Result<RateLimitDecision, StoreUnavailable> {
        match self {
            Limiter::Memory { limiter, epoch } => {
                Ok(limiter.check(checks, epoch.elapsed().as_nanos() as u64))
            }
            Limiter::Redis(r) => r.check(checks).await,
        }
    }
}

/// One validated policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// Shown to callers (`RateLimit-Policy`, MCP `policy`), e.g. `api.github` or `per_user`.
    pub name: String,
    pub requests: u32,
    pub window: Duration,
    /// 1 ≤ burst ≤ requests; defaults to `requests`.
    pub burst: u32,
}

impl Policy {
    fn window_ns(&self) -> u64 {
        self.window.as_nanos().min(u64::MAX as u128) as u64
    }

    /// Emission interval, rounded up so the steady rate never exceeds `requests / window`.
    fn interval_ns(&self) -> u64 {
        self.window_ns().div_ceil(u64::from(self.requests.max(1)))
    }
}

/// The state of one policy after a decision, for rate-limit response fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyState {
    pub name: String,
    pub requests: u32,
    pub window: Duration,
    /// Requests that could still be admitted back to back now.
    pub remaining: u32,
    /// Time until the oldest admission in the window leaves it.
    pub reset: Duration,
}

/// The outcome of checking every applicable policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RateLimitDecision {
    Allowed {
        states: Vec<PolicyState>,
    },
    Denied {
        policy: String,
        retry_after: Duration,
        states: Vec<PolicyState>,
    },
}

#[derive(Debug, Default)]
struct Bucket {
    /// GCRA theoretical arrival time, in ns on the limiter's clock.
    tat: u64,
    /// Admission times inside the current window, oldest first; at most `requests` long.
    log: VecDeque<u64>,
}

impl Bucket {
    fn prune(&mut self, now: u64, window: u64) {
        while self.log.front().is_some_and(|&t| t + window <= now) {
            self.log.pop_front();
        }
    }

    /// How long until this policy admits one more request (zero: now).
    fn wait(&self, p: &Policy, now: u64) -> u64 {
        let t = p.interval_ns();
        let tau = t * u64::from(p.burst - 1);
        let tat = self.tat.max(now);
        let gcra_wait = (tat - now).saturating_sub(tau);
        let log_wait = if self.log.len() >= p.requests as usize {
            let oldest_that_must_leave = self.log[self.log.len() - p.requests as usize];
            (oldest_that_must_leave + p.window_ns()).saturating_sub(now)
        } else {
            0
        };
        gcra_wait.max(log_wait)
    }

    fn commit(&mut self, p: &Policy, now: u64) {
        self.tat = self.tat.max(now) + p.interval_ns();
        self.log.push_back(now);
        while self.log.len() > p.requests as usize {
            self.log.pop_front();
        }
    }

    fn state(&self, p: &Policy, now: u64) -> PolicyState {
        let t = p.interval_ns();
        let tau = t * u64::from(p.burst - 1);
        let tat = self.tat.max(now);
        let burst_left = if tat - now > tau {
            0
        } else {
            (now + tau - tat) / t + 1
        };
        let window_left = u64::from(p.requests).saturating_sub(self.log.len() as u64);
        PolicyState {
            name: p.name.clone(),
            requests: p.requests,
            window: p.window,
            remaining: burst_left.min(window_left) as u32,
            reset: Duration::from_nanos(
                self.log
                    .front()
                    .map_or(0, |&oldest| (oldest + p.window_ns()).saturating_sub(now)),
            ),
        }
    }

    fn idle(&self, now: u64) -> bool {
        self.log.is_empty() && self.tat <= now
    }
}

/// How many decisions pass between sweeps of idle keys.
const SWEEP_EVERY: u64 = 4096;

/// The in-process limiter. One mutex guards all keys; a decision holds it for a few
/// hundred nanoseconds.
#[derive(Debug, Default)]
pub struct MemoryLimiter {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    buckets: HashMap<String, (Policy, Bucket)>,
    decisions: u64,
}

impl MemoryLimiter {
    pub fn new() -> Self {
        Self::default()
    }

    /// Checks every `(key, policy)` pair at time `now_ns` and commits all of them, or none.
    pub fn check(&self, checks: &[(String, &Policy)], now_ns: u64) -> RateLimitDecision {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.decisions += 1;
        if inner.decisions.is_multiple_of(SWEEP_EVERY) {
            inner.buckets.retain(|_, (p, b)| {
                b.prune(now_ns, p.window_ns());
                !b.idle(now_ns)
            });
        }
        let mut denied: Option<(String, u64)> = None;
        for (key, policy) in checks {
            let entry = inner
                .buckets
                .entry(key.clone())
                .or_insert_with(|| ((*policy).clone(), Bucket::default()));
            if entry.0 != **policy {
                // The policy changed (a reload); start this key afresh under the new one.
                *entry = ((*policy).clone(), Bucket::default());
            }
            entry.1.prune(now_ns, policy.window_ns());
            let wait = entry.1.wait(policy, now_ns);
            if wait > 0 && denied.as_ref().is_none_or(|(_, w)| wait > *w) {
                denied = Some((policy.name.clone(), wait));
            }
        }
        if denied.is_none() {
            for (key, policy) in checks {
                if let Some((_, b)) = inner.buckets.get_mut(key) {
                    b.commit(policy, now_ns);
                }
            }
        }
        let states = checks
            .iter()
            .filter_map(|(key, p)| inner.buckets.get(key).map(|(_, b)| b.state(p, now_ns)))
            .collect();
        match denied {
            None => RateLimitDecision::Allowed { states },
            Some((policy, wait)) => RateLimitDecision::Denied {
                policy,
                retry_after: Duration::from_nanos(wait),
                states,
            },
        }
    }
}

/// `RateLimit-Policy` and `RateLimit` field values (draft-ietf-httpapi-ratelimit-headers,
/// structured-field lists), one list member per policy.
pub fn header_values(states: &[PolicyState]) -> (String, String) {
    let policy = states
        .iter()
        .map(|s| {
            format!(
                "\"{}\";q={};w={}",
                s.name,
                s.requests,
                s.window.as_secs().max(1)
            )
        })
        .collect::<Vec<_>>()
        .join(", ");
    let limit = states
        .iter()
        .map(|s| format!("\"{}\";r={};t={}", s.name, s.remaining, ceil_secs(s.reset)))
        .collect::<Vec<_>>()
        .join(", ");
    (policy, limit)
}

/// Whole seconds, rounded up, for `Retry-After` and `t=`.
pub fn ceil_secs(d: Duration) -> u64 {
    d.as_nanos().div_ceil(1_000_000_000) as u64
}

/// The policy with the least room left, for the audit record: `{policy, remaining}`.
pub fn tightest_json(states: &[PolicyState]) -> Option<serde_json::Value> {
    states
        .iter()
        .min_by_key(|s| s.remaining)
        .map(|s| serde_json::json!({"policy": s.name, "remaining": s.remaining}))
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    fn policy(requests: u32, window_s: u64, burst: u32) -> Policy {
        Policy {
            name: "p".into(),
            requests,
            window: Duration::from_secs(window_s),
            burst,
        }
    }

    fn check(l: &MemoryLimiter, p: &Policy, now: u64) -> RateLimitDecision {
        l.check(&[("k".to_string(), p)], now)
    }

    /// A tiny deterministic generator so the property tests need no extra crate.
    fn lcg(seed: &mut u64) -> u64 {
        *seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        *seed >> 33
    }

    #[test]
    fn burst_then_steady_rate() {
        let l = MemoryLimiter::new();
        let p = policy(10, 10, 3);
        for _ in 0..3 {
            assert!(matches!(
                check(&l, &p, 0),
                RateLimitDecision::Allowed { .. }
            ));
        }
        let RateLimitDecision::Denied { retry_after, .. } = check(&l, &p, 0) else {
            panic!("fourth back-to-back request admitted")
        };
        assert_eq!(retry_after, Duration::from_secs(1));
        assert!(matches!(
            check(&l, &p, S - 1),
            RateLimitDecision::Denied { .. }
        ));
        assert!(matches!(
            check(&l, &p, S),
            RateLimitDecision::Allowed { .. }
        ));
    }

    #[test]
    fn sliding_window_ceiling_has_no_edge_double_burst() {
        let l = MemoryLimiter::new();
        let p = policy(5, 10, 5);
        for _ in 0..5 {
            assert!(matches!(
                check(&l, &p, 9 * S),
                RateLimitDecision::Allowed { .. }
            ));
        }
        // A fixed window would reset at t=10 s; the sliding window waits until t=19 s.
        let RateLimitDecision::Denied { retry_after, .. } = check(&l, &p, 10 * S) else {
            panic!("double burst at the window edge")
        };
        assert_eq!(retry_after, Duration::from_secs(9));
        assert!(matches!(
            check(&l, &p, 19 * S),
            RateLimitDecision::Allowed { .. }
        ));
    }

    #[test]
    fn denied_request_consumes_no_other_policy() {
        let l = MemoryLimiter::new();
        let tight = Policy {
            name: "tight".into(),
            ..policy(1, 60, 1)
        };
        let loose = Policy {
            name: "loose".into(),
            ..policy(100, 60, 100)
        };
        let both = |now| l.check(&[("a".into(), &tight), ("b".into(), &loose)], now);
        assert!(matches!(both(0), RateLimitDecision::Allowed { .. }));
        for _ in 0..10 {
            let RateLimitDecision::Denied { policy, .. } = both(1) else {
                panic!()
            };
            assert_eq!(policy, "tight");
        }
        let RateLimitDecision::Allowed { states } = l.check(&[("b".into(), &loose)], 2) else {
            panic!()
        };
        assert_eq!(
            states[0].remaining, 98,
            "denied requests consumed the loose policy"
        );
    }

    /// Random arrivals on a fake clock: no admission before Retry-After, admission exactly at
    /// it, never more than `requests` in any window, never more than `burst` back to back.
    #[test]
    fn property_random_arrivals() {
        let mut seed = 42;
        for case in 0..200 {
            let requests = 1 + (lcg(&mut seed) % 20) as u32;
            let burst = 1 + (lcg(&mut seed) % u64::from(requests)) as u32;
            let window = 1 + lcg(&mut seed) % 30;
            let p = policy(requests, window, burst);
            let l = MemoryLimiter::new();
            let mut now = 0u64;
            let mut admitted: Vec<u64> = Vec::new();
            for _ in 0..300 {
                // A quarter of arrivals are simultaneous, so bursts are really exercised.
                if !lcg(&mut seed).is_multiple_of(4) {
                    now += lcg(&mut seed) % (2 * window * S / u64::from(requests) + 1);
                }
                match check(&l, &p, now) {
                    RateLimitDecision::Allowed { .. } => admitted.push(now),
                    RateLimitDecision::Denied { retry_after, .. } => {
                        let at = now + retry_after.as_nanos() as u64;
                        if retry_after.as_nanos() > 1 {
                            assert!(
                                matches!(check(&l, &p, at - 1), RateLimitDecision::Denied { .. }),
                                "case {case}: admitted before Retry-After"
                            );
                        }
                        assert!(
                            matches!(check(&l, &p, at), RateLimitDecision::Allowed { .. }),
                            "case {case}: not admitted at Retry-After"
                        );
                        admitted.push(at);
                        now = at;
                    }
                }
            }
            let w = window * S;
            for (i, &t) in admitted.iter().enumerate() {
                let in_window = admitted[i..].iter().take_while(|&&u| u < t + w).count();
                assert!(
                    in_window <= requests as usize,
                    "case {case}: {in_window} > {requests} in a window"
                );
                let same_instant = admitted[i..].iter().take_while(|&&u| u == t).count();
                assert!(
                    same_instant <= burst as usize,
                    "case {case}: {same_instant} > burst {burst}"
                );
            }
        }
    }

    #[test]
    fn header_syntax() {
        let s = PolicyState {
            name: "api.local".into(),
            requests: 5,
            window: Duration::from_secs(10),
            remaining: 4,
            reset: Duration::from_millis(9500),
        };
        let (policy, limit) = header_values(&[s]);
        assert_eq!(policy, "\"api.local\";q=5;w=10");
        assert_eq!(limit, "\"api.local\";r=4;t=10");
    }
}
