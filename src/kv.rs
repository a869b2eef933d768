//! A Redis connection for state the replicas share (per-caller credentials, approvals),
//! driven from a runtime of its own, as the rate limiter's is: calls from any listener's
//! runtime share one multiplexed connection, and nothing is tied to a runtime that may stop.

use std::future::Future;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

pub struct RedisHandle {
    runtime: Option<tokio::runtime::Runtime>,
    conn: ConnectionManager,
    /// Prepended to every key.
    pub prefix: String,
}

impl Drop for RedisHandle {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

impl RedisHandle {
    /// A lazily connected client of `url`; `what` names it in errors and thread names.
    pub fn open(url: &str, prefix: &str, what: &str) -> Result<RedisHandle, String> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name(what)
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start the {what} runtime: {e}"))?;
        let client =
            redis::Client::open(url).map_err(|e| format!("{what}: invalid Redis URL: {e}"))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(Duration::from_secs(2)))
            .set_number_of_retries(1);
        // Entered, not blocked on: this may run inside another runtime (a reload, the CLI).
        let conn = {
            let _in = runtime.enter();
            ConnectionManager::new_lazy_with_config(client, config)
                .map_err(|e| format!("cannot create the {what} Redis client: {e}"))?
        };
        Ok(RedisHandle {
            runtime: Some(runtime),
            conn,
            prefix: prefix.to_string(),
        })
    }

    /// Runs `f` with a connection on the handle's runtime.
    pub async fn run<T, F, Fut>(&self, f: F) -> Result<T, String>
    where
        T: Send + 'static,
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>> + Send + 'static,
    {
        let rt = self.runtime.as_ref().ok_or("the Redis client is closed")?;
        rt.spawn(f(self.conn.clone()))
            .await
            .map_err(|e| format!("Redis: {e}"))?
            .map_err(|e| format!("Redis: {e}"))
    }

    /// `{prefix}{name}`.
    pub fn key(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }
}
