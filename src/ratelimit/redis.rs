//! The shared Redis store: one Lua script per decision checks and commits every applicable
//! policy atomically, on the Redis server's clock, so all replicas see one set of counters.
//!
//! - **One round trip.** A blocked caller costs none: a local cache remembers "blocked until T"
//!   per key.
//! - **Keys.** All keys share the hash tag `{agm}`, so one script's keys sit in one slot and it
//!   runs on Redis Cluster. Every key has a TTL of about one window.
//! - **A hard budget per decision** (`rate_limits.store.timeout`, default 25 ms). A circuit
//!   breaker stops calling a dead Redis for `cooldown`, then lets one probe through. Meanwhile
//!   `on_error` decides: `local` (an in-process limiter with `local_share` of each limit),
//!   `allow`, or `deny`.
//! - **Dedicated runtime.** Pingora gives each service its own runtime, so the Redis client
//!   lives on a small runtime of its own and is shared by all of them.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::cluster_async::ClusterConnection;

use super::batch::{Batches, Call};
use super::{
    MemoryLimiter, OnError, Policy, PolicyState, RateLimitDecision, RedisSettings, Topology,
};

/// Why the Redis store could not decide.
#[derive(Debug)]
pub enum StoreUnavailable {
    /// `on_error = "deny"`.
    Deny,
}

/// The decision script: GCRA burst control and a sliding-window ceiling per policy, for a
/// batch of decisions, run atomically in Redis (see the comments at its top).
const SCRIPT: &str = include_str!("limit.lua");

/// Consecutive failures that open the breaker.
const FAILURES_TO_OPEN: u32 = 3;

/// The Redis-backed limiter.
pub struct RedisLimiter {
    /// How this gateway reaches Redis: one server, a Cluster, or the master a Sentinel names.
    backend: Backend,
    pub(super) script: redis::Script,
    /// The read-only twin of `script`, for [`RedisLimiter::peek`].
    peek_script: redis::Script,
    settings: RedisSettings,
    /// Local "blocked until" per key: a blocked caller costs no round trip.
    blocked: Mutex<HashMap<String, Instant>>,
    /// Decisions waiting for the batch in flight.
    pub(super) batches: Mutex<Batches>,
    fallback: MemoryLimiter,
    consecutive_failures: AtomicU32,
    /// While `Instant` < this (as ns since `epoch`), Redis is not called.
    open_until_ns: AtomicU64,
    epoch: Instant,
    /// Keeps the client's runtime alive; Cluster and Sentinel connections are driven by it.
    runtime: tokio::runtime::Runtime,
    /// Where the store's health is reported (see [`RedisLimiter::reporting_to`]).
    report: Option<StoreReport>,
}

/// The metrics a Redis limiter reports its store's health to, given by whoever builds it:
/// the backend never reaches for a global registry.
#[derive(Clone)]
pub struct StoreReport {
    /// 1 while the store answers, 0 while the breaker is open.
    pub store_up: prometheus::IntGauge,
    /// Decisions made without the store, by `on_error` mode (`allow`, `deny`, `local`).
    pub fallbacks: prometheus::IntCounterVec,
}

/// The client of each topology.
enum Backend {
    Standalone {
        /// The connection of callers outside a Tokio runtime's worker (and the fallback).
        conn: ConnectionManager,
        /// One connection per calling thread, driven by that thread's runtime: a decision
        /// then costs no wake-up of another thread on the way out or back.
        conns: std::sync::RwLock<HashMap<std::thread::ThreadId, ConnectionManager>>,
        client: redis::Client,
        config: ConnectionManagerConfig,
    },
    /// The cluster connection routes each script to the node owning `{agm}`'s slot and
    /// follows MOVED and ASK on its own.
    Cluster {
        client: redis::cluster::ClusterClient,
        conn: std::sync::RwLock<Option<ClusterConnection>>,
    },
    /// The master's connection, dropped on any error so the next call asks the Sentinels
    /// again (a failover moves the master).
    Sentinel {
        client: std::sync::Arc<tokio::sync::Mutex<redis::sentinel::SentinelClient>>,
        conn: std::sync::RwLock<Option<MultiplexedConnection>>,
        config: redis::AsyncConnectionConfig,
    },
}

/// One connection of any topology, for the script and the nonce command alike.
#[derive(Clone)]
pub(super) enum Conn {
    Standalone(ConnectionManager),
    Cluster(ClusterConnection),
    Sentinel(MultiplexedConnection),
}

impl redis::aio::ConnectionLike for Conn {
    fn req_packed_command<'a>(
        &'a mut self,
        cmd: &'a redis::Cmd,
    ) -> redis::RedisFuture<'a, redis::Value> {
        match self {
            Conn::Standalone(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
            Conn::Sentinel(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        match self {
            Conn::Standalone(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Sentinel(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Standalone(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
            Conn::Sentinel(c) => c.get_db(),
        }
    }
}

impl RedisLimiter {
    /// Builds the client without connecting; the first decision connects.
    pub fn new(settings: RedisSettings) -> Result<Self, String> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("redis-limiter")
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start the Redis client runtime: {e}"))?;
        let t = settings.timeout;
        let backend = match settings.topology.clone() {
            Topology::Standalone => {
                let client = redis::Client::open(settings.url.as_str())
                    .map_err(|e| format!("invalid Redis URL: {e}"))?;
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(t))
                    .set_response_timeout(Some(t))
                    .set_number_of_retries(0);
                let conn = runtime
                    .block_on(async {
                        ConnectionManager::new_lazy_with_config(client.clone(), config.clone())
                    })
                    .map_err(|e| format!("cannot create the Redis client: {e}"))?;
                Backend::Standalone {
                    conn,
                    conns: std::sync::RwLock::new(HashMap::new()),
                    client,
                    config,
                }
            }
            Topology::Cluster(nodes) => Backend::Cluster {
                client: redis::cluster::ClusterClient::builder(nodes)
                    .connection_timeout(t)
                    .response_timeout(t)
                    .retries(1)
                    .build()
                    .map_err(|e| format!("invalid Redis Cluster URL: {e}"))?,
                conn: std::sync::RwLock::new(None),
            },
            Topology::Sentinel {
                sentinels,
                master,
                master_url,
            } => {
                let info = redis::IntoConnectionInfo::into_connection_info(master_url.as_str())
                    .map_err(|e| format!("invalid Redis Sentinel URL: {e}"))?;
                let mut node = redis::sentinel::SentinelNodeConnectionInfo::default()
                    .set_redis_connection_info(info.redis_settings().clone());
                if master_url.starts_with("rediss://") {
                    node = node.set_tls_mode(redis::TlsMode::Secure);
                }
                let client = redis::sentinel::SentinelClient::build(
                    sentinels,
                    master,
                    Some(node),
                    redis::sentinel::SentinelServerType::Master,
                )
                .map_err(|e| format!("invalid Redis Sentinel URL: {e}"))?;
                Backend::Sentinel {
                    client: std::sync::Arc::new(tokio::sync::Mutex::new(client)),
                    conn: std::sync::RwLock::new(None),
                    config: redis::AsyncConnectionConfig::new()
                        .set_connection_timeout(Some(t))
                        .set_response_timeout(Some(t)),
                }
            }
        };
        Ok(RedisLimiter {
            backend,
            script: redis::Script::new(SCRIPT),
            peek_script: redis::Script::new(include_str!("peek.lua")),
            settings,
            blocked: Mutex::new(HashMap::new()),
            batches: Mutex::new(Batches::default()),
            fallback: MemoryLimiter::new(),
            consecutive_failures: AtomicU32::new(0),
            open_until_ns: AtomicU64::new(0),
            epoch: Instant::now(),
            runtime,
            report: None,
        })
    }

    /// Reports the store's health (up or down, fallback decisions) to these metrics.
    pub fn reporting_to(mut self, report: StoreReport) -> Self {
        self.report = Some(report);
        self
    }

    /// A connection for this call: this thread's (standalone), or the shared one of a
    /// Cluster or Sentinel master, connected on first use on the limiter's own runtime.
    pub(super) async fn conn(&self) -> redis::RedisResult<Conn> {
        match &self.backend {
            Backend::Standalone {
                conn,
                conns,
                client,
                config,
            } => {
                let id = std::thread::current().id();
                if let Some(c) = conns.read().unwrap_or_else(|e| e.into_inner()).get(&id) {
                    return Ok(Conn::Standalone(c.clone()));
                }
                if tokio::runtime::Handle::try_current().is_err() {
                    return Ok(Conn::Standalone(conn.clone()));
                }
                Ok(Conn::Standalone(
                    match ConnectionManager::new_lazy_with_config(client.clone(), config.clone()) {
                        Ok(c) => {
                            conns
                                .write()
                                .unwrap_or_else(|e| e.into_inner())
                                .insert(id, c.clone());
                            c
                        }
                        Err(_) => conn.clone(),
                    },
                ))
            }
            Backend::Cluster { client, conn } => self
                .shared(conn, || {
                    let client = client.clone();
                    async move { client.get_async_connection().await }
                })
                .await
                .map(Conn::Cluster),
            Backend::Sentinel {
                client,
                conn,
                config,
            } => self
                .shared(conn, || {
                    let (client, config) = (client.clone(), config.clone());
                    async move {
                        client
                            .lock()
                            .await
                            .get_async_connection_with_config(&config)
                            .await
                    }
                })
                .await
                .map(Conn::Sentinel),
        }
    }

    /// The connection kept in `slot`, or a new one from `connect`, kept there for the next
    /// call. It is made on the limiter's runtime, so its driver task outlives the calling
    /// service's runtime.
    async fn shared<T, F>(
        &self,
        slot: &std::sync::RwLock<Option<T>>,
        connect: impl FnOnce() -> F,
    ) -> redis::RedisResult<T>
    where
        T: Clone + Send + 'static,
        F: std::future::Future<Output = redis::RedisResult<T>> + Send + 'static,
    {
        if let Some(c) = slot.read().unwrap_or_else(|e| e.into_inner()).clone() {
            return Ok(c);
        }
        let c = self.runtime.spawn(connect()).await.unwrap_or_else(|e| {
            Err(redis::RedisError::from((
                redis::ErrorKind::Io,
                "Redis connect task failed",
                e.to_string(),
            )))
        })?;
        *slot.write().unwrap_or_else(|e| e.into_inner()) = Some(c.clone());
        Ok(c)
    }

    /// After a failed call, a Sentinel master's connection is dropped so the next call asks
    /// the Sentinels where the master is now.
    fn forget_connection(&self) {
        if let Backend::Sentinel { conn, .. } = &self.backend {
            *conn.write().unwrap_or_else(|e| e.into_inner()) = None;
        }
    }

    fn elapsed_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    /// Decides for every `(key, policy)` pair, falling back per `on_error` when Redis fails.
    pub async fn check(
        &self,
        checks: &[(String, &Policy)],
    ) -> Result<RateLimitDecision, StoreUnavailable> {
        let now = Instant::now();
        if let Some(d) = self.locally_blocked(checks, now) {
            return Ok(d);
        }
        let breaker_open = self.elapsed_ns() < self.open_until_ns.load(Ordering::Relaxed);
        if !breaker_open {
            match tokio::time::timeout(self.settings.timeout, self.invoke(checks)).await {
                Ok(Ok(decision)) => {
                    self.record_success();
                    if let RateLimitDecision::Denied {
                        retry_after,
                        ref policy,
                        ..
                    } = decision
                    {
                        self.remember_block(checks, policy, now + retry_after);
                    }
                    return Ok(decision);
                }
                Ok(Err(e)) => self.record_failure(&e.to_string()),
                Err(_) => self.record_failure("timed out"),
            }
        }
        let mode = match self.settings.on_error {
            OnError::Allow => "allow",
            OnError::Deny => "deny",
            OnError::Local(_) => "local",
        };
        if let Some(r) = &self.report {
            r.fallbacks.with_label_values(&[mode]).inc();
        }
        match self.settings.on_error {
            OnError::Allow => Ok(RateLimitDecision::Allowed { states: Vec::new() }),
            OnError::Deny => Err(StoreUnavailable::Deny),
            OnError::Local(share) => {
                let scaled: Vec<Policy> = checks.iter().map(|(_, p)| scale(p, share)).collect();
                let local: Vec<(String, &Policy)> = checks
                    .iter()
                    .zip(&scaled)
                    .map(|((k, _), p)| (k.clone(), p))
                    .collect();
                Ok(self.fallback.check(&local, self.elapsed_ns()))
            }
        }
    }

    /// The state of every `(key, policy)` pair, read without counting anything (the
    /// console's limits view).
    pub async fn peek(&self, checks: &[(String, &Policy)]) -> redis::RedisResult<Vec<PolicyState>> {
        if checks.is_empty() {
            return Ok(Vec::new());
        }
        let call = super::batch::Call::new(checks);
        let mut inv = self.peek_script.prepare_invoke();
        for k in &call.keys {
            inv.key(k);
        }
        for a in &call.args {
            inv.arg(*a);
        }
        let query = async {
            let mut conn = self.conn().await?;
            inv.invoke_async::<Vec<i64>>(&mut conn).await
        };
        let out = tokio::time::timeout(self.settings.timeout, query)
            .await
            .map_err(|_| redis::RedisError::from((redis::ErrorKind::Io, "timed out")))??;
        Ok(states_of(checks, &out))
    }

    /// Forgets the counts kept under `keys` (every store key of each), here and in Redis.
    pub async fn reset(&self, keys: &[String]) -> redis::RedisResult<()> {
        {
            let mut blocked = self.blocked.lock().unwrap_or_else(|e| e.into_inner());
            for k in keys {
                blocked.remove(k);
            }
        }
        self.fallback.reset(keys);
        let mut conn = self.conn().await?;
        // One DEL per key: under Redis Cluster, keys of one command must share a slot.
        for k in keys {
            for kind in ["gcra", "log", "slots"] {
                redis::cmd("DEL")
                    .arg(format!("{{agm}}:{kind}:{k}"))
                    .query_async::<i64>(&mut conn)
                    .await?;
            }
        }
        Ok(())
    }

    /// Records a signature nonce for `ttl`: `Ok(true)` when it was unused. `Err(deny)` when
    /// Redis cannot answer; `deny` is true when `on_error = "deny"` (refuse the call), false
    /// when the caller should fall back to its local nonce memory.
    pub async fn claim_nonce(&self, key: &str, ttl: Duration) -> Result<bool, bool> {
        let deny = matches!(self.settings.on_error, OnError::Deny);
        if self.elapsed_ns() < self.open_until_ns.load(Ordering::Relaxed) {
            return Err(deny);
        }
        let cmd = redis::cmd("SET")
            .arg(format!("{{agm}}:nonce:{key}"))
            .arg(1)
            .arg("NX")
            .arg("PX")
            .arg(ttl.as_millis() as u64)
            .to_owned();
        let query = async {
            let mut conn = self.conn().await?;
            cmd.query_async::<Option<String>>(&mut conn).await
        };
        match tokio::time::timeout(self.settings.timeout, query).await {
            Ok(Ok(reply)) => {
                self.record_success();
                Ok(reply.is_some())
            }
            Ok(Err(e)) => {
                self.record_failure(&e.to_string());
                Err(deny)
            }
            Err(_) => {
                self.record_failure("timed out");
                Err(deny)
            }
        }
    }

    /// Closes the breaker after an answer; a recovery is logged once and shown in the gauge.
    fn record_success(&self) {
        if self.consecutive_failures.swap(0, Ordering::Relaxed) >= FAILURES_TO_OPEN {
            tracing::info!("Redis rate-limit store is reachable again; shared limits resume");
            if let Some(r) = &self.report {
                r.store_up.set(1);
            }
        }
    }

    fn record_failure(&self, why: &str) {
        self.forget_connection();
        let n = self.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
        if n >= FAILURES_TO_OPEN {
            let until = self.elapsed_ns() + self.settings.cooldown.as_nanos() as u64;
            self.open_until_ns.store(until, Ordering::Relaxed);
            if n == FAILURES_TO_OPEN {
                if let Some(r) = &self.report {
                    r.store_up.set(0);
                }
                tracing::warn!(
                    error = why,
                    on_error = %match self.settings.on_error {
                        crate::config::OnError::Local(share) => format!("local (share {share})"),
                        crate::config::OnError::Allow => "allow".to_string(),
                        crate::config::OnError::Deny => "deny".to_string(),
                    },
                    "Redis rate-limit store unavailable; falling back"
                );
            }
        }
    }

    fn locally_blocked(
        &self,
        checks: &[(String, &Policy)],
        now: Instant,
    ) -> Option<RateLimitDecision> {
        let mut blocked = self.blocked.lock().unwrap_or_else(|p| p.into_inner());
        let mut worst: Option<(String, Instant)> = None;
        for (key, policy) in checks {
            match blocked.get(key) {
                Some(&until) if until > now && worst.as_ref().is_none_or(|(_, w)| until > *w) => {
                    worst = Some((policy.name.clone(), until));
                }
                Some(&until) if until <= now => {
                    blocked.remove(key);
                }
                _ => {}
            }
        }
        worst.map(|(policy, until)| RateLimitDecision::Denied {
            policy,
            retry_after: until - now,
            states: Vec::new(),
        })
    }

    fn remember_block(&self, checks: &[(String, &Policy)], policy: &str, until: Instant) {
        if let Some((key, _)) = checks.iter().find(|(_, p)| p.name == policy) {
            let mut blocked = self.blocked.lock().unwrap_or_else(|p| p.into_inner());
            if blocked.len() > 100_000 {
                let now = Instant::now();
                blocked.retain(|_, u| *u > now);
            }
            blocked.insert(key.clone(), until);
        }
    }

    async fn invoke(&self, checks: &[(String, &Policy)]) -> redis::RedisResult<RateLimitDecision> {
        let out = self.batched(Call::new(checks)).await?;
        let denied = out.first().copied().unwrap_or(0) as usize;
        let wait_us = out.get(1).copied().unwrap_or(0).max(0) as u64;
        let states = states_of(checks, out.get(2..).unwrap_or_default());
        Ok(if denied == 0 {
            RateLimitDecision::Allowed { states }
        } else {
            RateLimitDecision::Denied {
                policy: checks[denied - 1].1.name.clone(),
                retry_after: Duration::from_micros(wait_us),
                states,
            }
        })
    }
}

/// Each policy's state from a script's `remaining, reset_us` pairs, in `checks` order.
fn states_of(checks: &[(String, &Policy)], out: &[i64]) -> Vec<PolicyState> {
    checks
        .iter()
        .enumerate()
        .map(|(i, (_, p))| PolicyState {
            name: p.name.clone(),
            requests: p.requests,
            window: p.window,
            remaining: out.get(2 * i).copied().unwrap_or(0).max(0) as u32,
            reset: Duration::from_micros(out.get(2 * i + 1).copied().unwrap_or(0).max(0) as u64),
        })
        .collect()
}

/// A policy with `share` of its requests and burst (at least 1 each).
fn scale(p: &Policy, share: f64) -> Policy {
    let requests = ((f64::from(p.requests) * share).floor() as u32).max(1);
    Policy {
        name: p.name.clone(),
        requests,
        window: p.window,
        burst: ((f64::from(p.burst) * share).floor() as u32).clamp(1, requests),
        shadow: false,
    }
}
