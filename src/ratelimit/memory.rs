//! The in-process limiter: the sliding-window ceiling (exact log or slot counts) and the
//! GCRA burst per key, all under one mutex. It is the default store and Redis's fallback.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use super::{Ceiling, Policy, PolicyState, RateLimitDecision};

/// Admission counts in consecutive slots, oldest first.
#[derive(Debug, Default, Clone)]
struct SlotCounts {
    /// The slot index (time / slot width) of `counts[0]`.
    base: u64,
    counts: VecDeque<u32>,
    total: u64,
}

impl SlotCounts {
    /// Drops the slots that lie wholly before the window ending at `now`.
    fn prune(&mut self, now: u64, window: u64, slot: u64) {
        let first = now.saturating_sub(window) / slot;
        while self.base < first && !self.counts.is_empty() {
            self.total -= u64::from(self.counts.pop_front().unwrap_or(0));
            self.base += 1;
        }
        if self.counts.is_empty() {
            self.base = first;
        }
    }

    /// How long until fewer than `requests` are counted (zero: now). Call after `prune`.
    fn wait(&self, requests: u32, now: u64, window: u64, slot: u64) -> u64 {
        // Drop the oldest slots until fewer than `requests` remain counted.
        let mut left = self.total;
        let mut dropped = 0;
        for &c in &self.counts {
            if left < u64::from(requests) {
                break;
            }
            left -= u64::from(c);
            dropped += 1;
        }
        if dropped == 0 {
            0
        } else {
            // The last dropped slot leaves the window once the window starts at its end.
            ((self.base + dropped) * slot + window).saturating_sub(now)
        }
    }

    fn commit(&mut self, now: u64, slot: u64) {
        let i = now / slot;
        if self.counts.is_empty() {
            self.base = i;
        }
        let at = (i - self.base) as usize;
        if self.counts.len() <= at {
            self.counts.resize(at + 1, 0);
        }
        self.counts[at] += 1;
        self.total += 1;
    }

    /// Time until the oldest counted admission's slot leaves the window.
    fn reset(&self, now: u64, window: u64, slot: u64) -> u64 {
        match self.counts.iter().position(|&c| c > 0) {
            Some(i) => ((self.base + i as u64 + 1) * slot + window).saturating_sub(now),
            None => 0,
        }
    }
}

#[derive(Debug, Default, Clone)]
struct Bucket {
    /// GCRA theoretical arrival time, in ns on the limiter's clock.
    tat: u64,
    /// [`Ceiling::Log`]: admission times inside the current window, oldest first; at most
    /// `requests` long.
    log: VecDeque<u64>,
    /// [`Ceiling::Slots`]: admissions per slot.
    slots: SlotCounts,
}

impl Bucket {
    fn prune(&mut self, p: &Policy, now: u64) {
        let window = p.window_ns();
        match p.ceiling() {
            Ceiling::Gcra => {}
            Ceiling::Log => {
                while self.log.front().is_some_and(|&t| t + window <= now) {
                    self.log.pop_front();
                }
            }
            Ceiling::Slots => self.slots.prune(now, window, p.slot_ns()),
        }
    }

    /// How long until this policy admits one more request (zero: now).
    fn wait(&self, p: &Policy, now: u64) -> u64 {
        let t = p.interval_ns();
        let tau = t * u64::from(p.burst - 1);
        let tat = self.tat.max(now);
        let gcra_wait = if p.gcra() {
            (tat - now).saturating_sub(tau)
        } else {
            0
        };
        let ceiling_wait = match p.ceiling() {
            Ceiling::Gcra => 0,
            Ceiling::Log if self.log.len() >= p.requests as usize => {
                let oldest_that_must_leave = self.log[self.log.len() - p.requests as usize];
                (oldest_that_must_leave + p.window_ns()).saturating_sub(now)
            }
            Ceiling::Log => 0,
            Ceiling::Slots => self.slots.wait(p.requests, now, p.window_ns(), p.slot_ns()),
        };
        gcra_wait.max(ceiling_wait)
    }

    fn commit(&mut self, p: &Policy, now: u64) {
        if p.gcra() {
            self.tat = self.tat.max(now) + p.interval_ns();
        }
        match p.ceiling() {
            Ceiling::Gcra => {}
            Ceiling::Log => {
                self.log.push_back(now);
                while self.log.len() > p.requests as usize {
                    self.log.pop_front();
                }
            }
            Ceiling::Slots => self.slots.commit(now, p.slot_ns()),
        }
    }

    fn state(&self, p: &Policy, now: u64) -> PolicyState {
        let t = p.interval_ns();
        let tau = t * u64::from(p.burst - 1);
        let tat = self.tat.max(now);
        let burst_left = if !p.gcra() {
            u64::MAX
        } else if tat - now > tau {
            0
        } else {
            (now + tau - tat) / t + 1
        };
        let window = p.window_ns();
        let (counted, reset) = match p.ceiling() {
            // The full burst is back once the schedule has caught up with the clock.
            Ceiling::Gcra => (0, (tat - now).min(window)),
            Ceiling::Log => (
                self.log.len() as u64,
                self.log
                    .front()
                    .map_or(0, |&oldest| (oldest + window).saturating_sub(now)),
            ),
            Ceiling::Slots => (self.slots.total, self.slots.reset(now, window, p.slot_ns())),
        };
        let window_left = u64::from(p.requests).saturating_sub(counted);
        PolicyState {
            name: p.name.clone(),
            requests: p.requests,
            window: p.window,
            remaining: burst_left.min(window_left) as u32,
            reset: Duration::from_nanos(reset),
        }
    }

    fn idle(&self, now: u64) -> bool {
        self.log.is_empty() && self.slots.total == 0 && self.tat <= now
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

    /// The state of every `(key, policy)` pair at `now_ns`, consuming nothing: a key not
    /// seen yet has its whole allowance.
    pub fn peek(&self, checks: &[(String, &Policy)], now_ns: u64) -> Vec<PolicyState> {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        checks
            .iter()
            .map(|(key, p)| match inner.buckets.get(key) {
                Some((seen, b)) if seen == *p => {
                    let mut b = b.clone();
                    b.prune(p, now_ns);
                    b.state(p, now_ns)
                }
                _ => Bucket::default().state(p, now_ns),
            })
            .collect()
    }

    /// Forgets the counts kept under `keys`.
    pub fn reset(&self, keys: &[String]) {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        for k in keys {
            inner.buckets.remove(k);
        }
    }

    /// Checks every `(key, policy)` pair at time `now_ns` and commits all of them, or none.
    pub fn check(&self, checks: &[(String, &Policy)], now_ns: u64) -> RateLimitDecision {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.decisions += 1;
        if inner.decisions.is_multiple_of(SWEEP_EVERY) {
            inner.buckets.retain(|_, (p, b)| {
                b.prune(p, now_ns);
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
            entry.1.prune(policy, now_ns);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ratelimit::{EXACT_LOG_MAX, SLOTS};

    const S: u64 = 1_000_000_000;

    fn policy(requests: u32, window_s: u64, burst: u32) -> Policy {
        Policy {
            name: "p".into(),
            requests,
            window: Duration::from_secs(window_s),
            burst,
            shadow: false,
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

    /// Feeds `arrivals` requests to a fresh limiter on a fake clock, each after the step
    /// `advance` draws (0: simultaneous), and checks: no admission before Retry-After,
    /// admission exactly at it, never more than `requests` in any window, never more than
    /// `burst` back to back.
    fn check_random_arrivals(
        case: usize,
        p: &Policy,
        arrivals: usize,
        mut advance: impl FnMut() -> u64,
    ) {
        let l = MemoryLimiter::new();
        let mut now = 0u64;
        let mut admitted: Vec<u64> = Vec::new();
        for _ in 0..arrivals {
            now += advance();
            match check(&l, p, now) {
                RateLimitDecision::Allowed { .. } => admitted.push(now),
                RateLimitDecision::Denied { retry_after, .. } => {
                    let at = now + retry_after.as_nanos() as u64;
                    if retry_after.as_nanos() > 1 {
                        assert!(
                            matches!(check(&l, p, at - 1), RateLimitDecision::Denied { .. }),
                            "case {case}: admitted before Retry-After"
                        );
                    }
                    assert!(
                        matches!(check(&l, p, at), RateLimitDecision::Allowed { .. }),
                        "case {case}: not admitted at Retry-After"
                    );
                    admitted.push(at);
                    now = at;
                }
            }
        }
        let w = p.window_ns();
        // Admission times only grow, so the end of each window is found by one forward scan.
        let mut end = 0;
        for (i, &t) in admitted.iter().enumerate() {
            while end < admitted.len() && admitted[end] < t + w {
                end += 1;
            }
            let in_window = end - i;
            assert!(
                in_window <= p.requests as usize,
                "case {case}: {in_window} > {} in a window",
                p.requests
            );
            let same_instant = admitted[i..].iter().take_while(|&&u| u == t).count();
            assert!(
                same_instant <= p.burst as usize,
                "case {case}: {same_instant} > burst {}",
                p.burst
            );
        }
    }

    /// Random arrivals with small limits (the exact log, or GCRA alone for `burst = 1`).
    #[test]
    fn property_random_arrivals() {
        let mut seed = 42;
        for case in 0..200 {
            let requests = 1 + (lcg(&mut seed) % 20) as u32;
            let burst = 1 + (lcg(&mut seed) % u64::from(requests)) as u32;
            let window = 1 + lcg(&mut seed) % 30;
            let p = policy(requests, window, burst);
            let step = 2 * window * S / u64::from(requests) + 1;
            // A quarter of arrivals are simultaneous, so bursts are really exercised.
            check_random_arrivals(case, &p, 300, || {
                if lcg(&mut seed).is_multiple_of(4) {
                    0
                } else {
                    lcg(&mut seed) % step
                }
            });
        }
    }

    /// The slot counter against an exact log fed the same admissions: it never admits where
    /// the log would not, and refuses for at most one slot longer.
    #[test]
    fn slot_ceiling_is_safe_and_at_most_one_slot_late() {
        let mut seed = 7;
        for case in 0..40 {
            let requests = 1 + (lcg(&mut seed) % 3000) as u32;
            let window = (1 + lcg(&mut seed) % 120) * S;
            let slot = window.div_ceil(SLOTS);
            let mut slots = SlotCounts::default();
            let mut log: Vec<u64> = Vec::new();
            let mut lo = 0;
            let mut now = lcg(&mut seed) % (10 * S);
            for _ in 0..6000 {
                // Bursts of simultaneous arrivals, and gaps up to a third of the window.
                if lcg(&mut seed).is_multiple_of(3) {
                    now += lcg(&mut seed) % (window / 3);
                }
                slots.prune(now, window, slot);
                let wait = slots.wait(requests, now, window, slot);
                while lo < log.len() && log[lo] + window <= now {
                    lo += 1;
                }
                let in_window = log.len() - lo;
                let exact = if in_window >= requests as usize {
                    let oldest = log[log.len() - requests as usize];
                    oldest + window - now
                } else {
                    0
                };
                assert!(wait >= exact, "case {case}: admits where the log would not");
                assert!(
                    wait <= exact + slot,
                    "case {case}: {wait} ns is more than one slot ({slot}) past {exact}"
                );
                if wait == 0 {
                    slots.commit(now, slot);
                    log.push(now);
                } else {
                    // The retry at `now + wait` is admitted by the counter itself.
                    let mut probe = SlotCounts {
                        base: slots.base,
                        counts: slots.counts.clone(),
                        total: slots.total,
                    };
                    probe.prune(now + wait, window, slot);
                    assert_eq!(probe.wait(requests, now + wait, window, slot), 0);
                    if wait > 1 {
                        let mut early = SlotCounts {
                            base: slots.base,
                            counts: slots.counts.clone(),
                            total: slots.total,
                        };
                        early.prune(now + wait - 1, window, slot);
                        assert!(early.wait(requests, now + wait - 1, window, slot) > 0);
                    }
                }
            }
        }
    }

    /// The same properties for policies above `EXACT_LOG_MAX` (counted in slots) and with
    /// `burst = 1` (GCRA alone).
    #[test]
    fn property_random_arrivals_large_and_unit_burst() {
        let mut seed = 99;
        for case in 0..24 {
            let (requests, burst) = if case % 2 == 0 {
                let r = EXACT_LOG_MAX + 1 + (lcg(&mut seed) % 2000) as u32;
                (r, 1 + (lcg(&mut seed) % u64::from(r)) as u32)
            } else {
                (1 + (lcg(&mut seed) % 3000) as u32, 1)
            };
            let window = 1 + lcg(&mut seed) % 60;
            let p = policy(requests, window, burst);
            assert_eq!(
                p.ceiling(),
                if burst == 1 {
                    Ceiling::Gcra
                } else {
                    Ceiling::Slots
                }
            );
            let step = 3 * window * S / u64::from(requests) + 1;
            // Two thirds of arrivals are simultaneous.
            let arrivals = (3 * requests as usize).min(6000);
            check_random_arrivals(case, &p, arrivals, || {
                if lcg(&mut seed).is_multiple_of(3) {
                    lcg(&mut seed) % step
                } else {
                    0
                }
            });
        }
    }

    /// A ceiling of 5000 per minute takes a few hundred bytes per key, not one entry per
    /// admission.
    #[test]
    fn large_policies_keep_slots_not_a_log() {
        let l = MemoryLimiter::new();
        let p = policy(5000, 60, 5000);
        for i in 0..5000 {
            assert!(matches!(
                check(&l, &p, i * 1000),
                RateLimitDecision::Allowed { .. }
            ));
        }
        let RateLimitDecision::Denied { retry_after, .. } = check(&l, &p, 5000 * 1000) else {
            panic!("5001st admitted")
        };
        // Everything sits in slot 0 (0.94 s wide): free again once it has left the window.
        assert_eq!(
            retry_after.as_nanos() as u64,
            60 * S + (60 * S).div_ceil(SLOTS) - 5_000_000
        );
        let inner = l.inner.lock().unwrap();
        let (_, b) = &inner.buckets["k"];
        assert!(b.log.is_empty());
        assert_eq!((b.slots.counts.len(), b.slots.total), (1, 5000));
    }
}
