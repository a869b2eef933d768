//! Where sealed per-caller credentials are kept: a SQLite file (one replica) or Redis (many
//! replicas, one hash per API). The store holds sealed records only; it never sees a secret.
//! Redis is driven from a runtime of its own, as the rate limiter's is, so that calls from any
//! listener's runtime share one connection.

use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::StoreKind;

/// One principal's sealed credential for one API.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Record {
    pub api: String,
    pub principal: String,
    /// `secret` (a `per_principal` secret) or `oauth` (a `user_oauth` token set).
    pub kind: String,
    /// [`super::cipher::Keyring::seal`]'s output.
    pub sealed: String,
    /// The first 8 hex digits of the secret's (or access token's) SHA-256.
    pub fingerprint: String,
    /// Unix seconds.
    pub created: u64,
    pub updated: u64,
    /// When the access token expires (`oauth`), Unix seconds.
    pub expires: Option<u64>,
}

/// A store operation that failed; the message names the store, never a secret.
pub type StoreResult<T> = Result<T, String>;

pub enum Store {
    Sqlite(Mutex<rusqlite::Connection>),
    Redis(crate::kv::RedisHandle),
}

const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS credentials (
    api TEXT NOT NULL, principal TEXT NOT NULL, kind TEXT NOT NULL, sealed TEXT NOT NULL,
    fingerprint TEXT NOT NULL, created INTEGER NOT NULL, updated INTEGER NOT NULL,
    expires INTEGER, PRIMARY KEY (api, principal));
    CREATE TABLE IF NOT EXISTS leases (name TEXT PRIMARY KEY, until INTEGER NOT NULL)";

/// A row of `SELECT principal, kind, sealed, fingerprint, created, updated, expires`.
fn record(api: &str, r: &rusqlite::Row<'_>) -> rusqlite::Result<Record> {
    Ok(Record {
        api: api.to_string(),
        principal: r.get(0)?,
        kind: r.get(1)?,
        sealed: r.get(2)?,
        fingerprint: r.get(3)?,
        created: r.get::<_, i64>(4)? as u64,
        updated: r.get::<_, i64>(5)? as u64,
        expires: r.get::<_, Option<i64>>(6)?.map(|e| e as u64),
    })
}

fn sql_err(path: &str) -> impl Fn(rusqlite::Error) -> String + '_ {
    move |e| format!("credential store {path}: {e}")
}

impl Store {
    /// Opens (creating if needed) the store; Redis is connected lazily.
    pub fn open(kind: &StoreKind) -> StoreResult<Store> {
        match kind {
            StoreKind::Sqlite(path) => Self::open_sqlite(path),
            StoreKind::Redis { url, prefix } => Ok(Store::Redis(crate::kv::RedisHandle::open(
                url,
                prefix,
                "credential-store",
            )?)),
        }
    }

    fn open_sqlite(path: &Path) -> StoreResult<Store> {
        let name = path.display().to_string();
        let conn = rusqlite::Connection::open(path).map_err(sql_err(&name))?;
        conn.execute_batch(&format!(
            "PRAGMA journal_mode=WAL; PRAGMA busy_timeout=2000; {SCHEMA};"
        ))
        .map_err(sql_err(&name))?;
        // The file holds sealed records only, but nobody else needs to read it.
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600));
        }
        Ok(Store::Sqlite(Mutex::new(conn)))
    }

    fn sqlite<T>(
        conn: &Mutex<rusqlite::Connection>,
        f: impl FnOnce(&rusqlite::Connection) -> rusqlite::Result<T>,
    ) -> StoreResult<T> {
        let c = conn.lock().unwrap_or_else(|e| e.into_inner());
        f(&c).map_err(|e| format!("credential store: {e}"))
    }

    pub async fn get(&self, api: &str, principal: &str) -> StoreResult<Option<Record>> {
        match self {
            Store::Sqlite(c) => Self::sqlite(c, |c| {
                let mut st = c.prepare_cached(
                    "SELECT principal, kind, sealed, fingerprint, created, updated, expires FROM credentials WHERE api = ?1 AND principal = ?2",
                )?;
                let mut rows =
                    st.query_map(rusqlite::params![api, principal], |r| record(api, r))?;
                rows.next().transpose()
            }),
            Store::Redis(r) => {
                let key = r.key(api);
                let field = principal.to_string();
                let raw: Option<String> = r
                    .run(|mut conn| async move {
                        redis::cmd("HGET")
                            .arg(key)
                            .arg(field)
                            .query_async(&mut conn)
                            .await
                    })
                    .await?;
                Ok(raw.and_then(|j| serde_json::from_str(&j).ok()))
            }
        }
    }

    pub async fn put(&self, rec: &Record) -> StoreResult<()> {
        match self {
            Store::Sqlite(c) => Self::sqlite(c, |c| {
                c.execute(
                    "INSERT INTO credentials (api, principal, kind, sealed, fingerprint, created, updated, expires)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
                     ON CONFLICT(api, principal) DO UPDATE SET kind = excluded.kind,
                       sealed = excluded.sealed, fingerprint = excluded.fingerprint,
                       updated = excluded.updated, expires = excluded.expires",
                    rusqlite::params![
                        rec.api,
                        rec.principal,
                        rec.kind,
                        rec.sealed,
                        rec.fingerprint,
                        rec.created as i64,
                        rec.updated as i64,
                        rec.expires.map(|e| e as i64)
                    ],
                )
                .map(|_| ())
            }),
            Store::Redis(r) => {
                let key = r.key(&rec.api);
                let field = rec.principal.clone();
                let value = serde_json::to_string(rec).map_err(|e| e.to_string())?;
                r.run(|mut conn| async move {
                    redis::cmd("HSET")
                        .arg(key)
                        .arg(field)
                        .arg(value)
                        .query_async::<()>(&mut conn)
                        .await
                })
                .await
            }
        }
    }

    /// Removes a record; says whether there was one.
    pub async fn delete(&self, api: &str, principal: &str) -> StoreResult<bool> {
        match self {
            Store::Sqlite(c) => Self::sqlite(c, |c| {
                c.execute(
                    "DELETE FROM credentials WHERE api = ?1 AND principal = ?2",
                    rusqlite::params![api, principal],
                )
                .map(|n| n > 0)
            }),
            Store::Redis(r) => {
                let key = r.key(api);
                let field = principal.to_string();
                let n: i64 = r
                    .run(|mut conn| async move {
                        redis::cmd("HDEL")
                            .arg(key)
                            .arg(field)
                            .query_async(&mut conn)
                            .await
                    })
                    .await?;
                Ok(n > 0)
            }
        }
    }

    /// Every record of `api`, or of every API in `apis`, sorted by API and principal.
    pub async fn list(&self, apis: &[String]) -> StoreResult<Vec<Record>> {
        let mut out = Vec::new();
        for api in apis {
            match self {
                Store::Sqlite(c) => out.extend(Self::sqlite(c, |c| {
                    let mut st = c.prepare_cached(
                        "SELECT principal, kind, sealed, fingerprint, created, updated, expires FROM credentials WHERE api = ?1",
                    )?;
                    let rows = st.query_map([api], |r| record(api, r))?;
                    rows.collect::<rusqlite::Result<Vec<_>>>()
                })?),
                Store::Redis(r) => {
                        let key = r.key(api);
                    let all: Vec<(String, String)> = r.run(|mut conn| async move {
                        redis::cmd("HGETALL").arg(key).query_async(&mut conn).await
                    })
                    .await?;
                    out.extend(all.into_iter().filter_map(|(_, j)| serde_json::from_str(&j).ok()));
                }
            }
        }
        out.sort_by(|a, b| (&a.api, &a.principal).cmp(&(&b.api, &b.principal)));
        Ok(out)
    }

    /// Takes a lease named `name` for `ttl`: true when nobody holds it (one token refresh
    /// across replicas; a connect link used once). SQLite keeps leases in a table of its own.
    pub async fn lease(&self, name: &str, ttl: Duration) -> StoreResult<bool> {
        match self {
            Store::Sqlite(c) => Self::sqlite(c, |c| {
                let now = super::now_s() as i64;
                c.execute("DELETE FROM leases WHERE until <= ?1", [now])?;
                c.execute(
                    "INSERT OR IGNORE INTO leases (name, until) VALUES (?1, ?2)",
                    rusqlite::params![name, now + ttl.as_secs().max(1) as i64],
                )
                .map(|n| n == 1)
            }),
            Store::Redis(r) => {
                let key = r.key(&format!("lease:{name}"));
                let ms = ttl.as_millis() as u64;
                let got: Option<String> = r
                    .run(|mut conn| async move {
                        redis::cmd("SET")
                            .arg(key)
                            .arg("1")
                            .arg("NX")
                            .arg("PX")
                            .arg(ms)
                            .query_async(&mut conn)
                            .await
                    })
                    .await?;
                Ok(got.is_some())
            }
        }
    }

    /// Gives a lease back before it expires.
    pub async fn release(&self, name: &str) {
        if let Store::Sqlite(c) = self {
            let _ = Self::sqlite(c, |c| {
                c.execute("DELETE FROM leases WHERE name = ?1", [name])
            });
        }
        if let Store::Redis(r) = self {
            let key = r.key(&format!("lease:{name}"));
            let _ = r
                .run(|mut conn| async move {
                    redis::cmd("DEL")
                        .arg(key)
                        .query_async::<()>(&mut conn)
                        .await
                })
                .await;
        }
    }
}
