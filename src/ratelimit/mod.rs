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
//!
//! Files:
//! - `mod.rs`: [`Limiter`], the one entry point; [`RateLimitDecision`], [`Ceiling`] and the
//!   policy arithmetic both stores share.
//! - `memory.rs`: [`MemoryLimiter`], the in-process store (also Redis's fallback).
//! - `redis.rs`: [`RedisLimiter`], connections per topology, circuit breaker, fallback, nonces.
//! - `batch.rs`: the group commit that sends many Redis decisions in one script call.
//! - `headers.rs`: [`header_values`] (the IETF RateLimit fields) and [`tightest_json`].
//! - `limit.lua`: the decision script run in Redis; `peek.lua`, its read-only twin.

use std::time::{Duration, Instant};

mod batch;
mod headers;
mod memory;
pub mod redis;
pub use self::headers::{header_values, tightest_json};
pub use self::memory::MemoryLimiter;
pub use self::redis::{RedisLimiter, StoreUnavailable};
pub use crate::config::{OnError, Policy, RedisSettings, Topology};
pub use crate::types::{ceil_secs, PolicyState};

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

    /// The current state of every `(key, policy)` pair, consuming nothing; `None` with the
    /// Redis store (reading it would take a round trip per policy).
    pub fn peek(&self, checks: &[(String, &Policy)]) -> Option<Vec<PolicyState>> {
        match self {
            Limiter::Memory { limiter, epoch } => {
                Some(limiter.peek(checks, epoch.elapsed().as_nanos() as u64))
            }
            Limiter::Redis(_) => None,
        }
    }

    /// The current state of every `(key, policy)` pair from whichever store holds it,
    /// consuming nothing (a round trip to Redis with that store).
    pub async fn peek_states(
        &self,
        checks: &[(String, &Policy)],
    ) -> Result<Vec<PolicyState>, String> {
        match self {
            Limiter::Memory { limiter, epoch } => {
                Ok(limiter.peek(checks, epoch.elapsed().as_nanos() as u64))
            }
            Limiter::Redis(r) => r.peek(checks).await.map_err(|e| e.to_string()),
        }
    }

    /// Forgets the counts kept under `keys`: the next call under them starts afresh.
    pub async fn reset(&self, keys: &[String]) -> Result<(), String> {
        match self {
            Limiter::Memory { limiter, .. } => {
                limiter.reset(keys);
                Ok(())
            }
            Limiter::Redis(r) => r.reset(keys).await.map_err(|e| e.to_string()),
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

impl Policy {
    fn window_ns(&self) -> u64 {
        self.window.as_nanos().min(u64::MAX as u128) as u64
    }

    /// Emission interval, rounded up so the steady rate never exceeds `requests / window`.
    fn interval_ns(&self) -> u64 {
        self.window_ns().div_ceil(u64::from(self.requests.max(1)))
    }
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

/// The largest `requests` whose ceiling is kept as an exact log of admission times. Above
/// it, a log would cost memory per admission (8 bytes here, ~100 in a Redis sorted set) and
/// time per decision, so the ceiling is counted in [`SLOTS`] slots instead.
pub const EXACT_LOG_MAX: u32 = 1000;

/// Slots per window for policies above [`EXACT_LOG_MAX`].
pub const SLOTS: u64 = 64;

/// How a policy keeps its sliding-window ceiling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ceiling {
    /// `burst = 1`: GCRA alone spaces admissions at least `window / requests` apart, so no
    /// window can hold more than `requests`; nothing else is kept.
    Gcra,
    /// An exact log of admission times (`requests ≤ EXACT_LOG_MAX`).
    Log,
    /// Admissions counted per slot of `window / SLOTS` (rounded up). A request is admitted
    /// only if every slot that overlaps the window holds fewer than `requests` in all, so no
    /// window ever holds more than `requests`. The cost of the approximation is one slot: the
    /// oldest slot counts whole until it has left the window entirely, so after the ceiling
    /// is reached admissions resume at most one slot width (`window / 64`) later than an
    /// exact log would allow, and `Retry-After` says exactly when.
    Slots,
}

impl Policy {
    pub fn ceiling(&self) -> Ceiling {
        if self.burst == 1 {
            Ceiling::Gcra
        } else if self.requests <= EXACT_LOG_MAX {
            Ceiling::Log
        } else {
            Ceiling::Slots
        }
    }

    /// Whether GCRA is kept. With `burst = requests` (the default) it never refuses what the
    /// window's ceiling admits: a bucket of `requests` tokens refilled at `requests / window`
    /// holds at least `requests` minus the admissions of the last window. So only the
    /// ceiling is kept, which saves a key and two commands per decision in Redis.
    pub fn gcra(&self) -> bool {
        self.burst < self.requests || self.ceiling() == Ceiling::Gcra
    }

    /// The slot width of [`Ceiling::Slots`], in ns.
    fn slot_ns(&self) -> u64 {
        self.window_ns().div_ceil(SLOTS).max(1)
    }
}
