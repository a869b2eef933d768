//! Per-caller upstream credentials: the credential stage of admission for APIs whose
//! `credentials.mode` is not `static`, and the management of the secrets behind it.
//!
//! - `per_principal`: each caller's secret, sealed in the [`store`] ([`cipher`]).
//! - `token_exchange`: the caller's token exchanged at a token endpoint (RFC 8693), cached
//!   per (token digest, API, audience, scope) until `exp` minus a skew, one exchange in
//!   flight per key, failures remembered briefly ([`oauth`]).
//! - `user_oauth`: the user's own account, connected once (authorization code with PKCE),
//!   refreshed before expiry, revoked on disconnect ([`oauth`]).
//!
//! Principals are keyed by their id as it appears in the audit record (`jwt:alice`,
//! `jwt:https://idp.example#alice` for a token of a second issuer, `key:ci`, `oauth2:bob`).
//! A resolved credential is set on a per-call copy of the API ([`Resolved::api`]), so egress,
//! masking and redaction use the caller's value the same way as a static one.

pub mod cipher;
pub mod oauth;
pub mod store;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::config::{Api, Config, CredentialMode, DynamicCredential};
use crate::egress::Egress;
use crate::error::{ErrorKind, GatewayError, Reason};
use cipher::Keyring;
use store::{Record, Store};

/// Unix seconds now.
pub fn now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Entries kept in each in-memory cache before expired ones are swept (or all dropped).
const MAX_CACHED: usize = 10_000;

/// A random key for this process, for sealing when no store key is configured.
static PROCESS_KEY: std::sync::LazyLock<[u8; 32]> = std::sync::LazyLock::new(|| {
    let mut k = [0u8; 32];
    getrandom::fill(&mut k)
        .expect("the operating system's randomness is needed to seal request state");
    k
});

/// How long a connect link stays valid.
pub const CONNECT_TTL: Duration = Duration::from_secs(15 * 60);

/// How a call's credential was obtained, for the audit record, the span and metrics.
#[derive(Debug, Clone)]
pub struct CredentialUse {
    /// `static`, `per_principal`, `token_exchange` or `user_oauth`.
    pub source: &'static str,
    /// The first 8 hex digits of the injected secret's SHA-256.
    pub fingerprint: Arc<str>,
    /// When a token endpoint was called for this call (an exchange or a refresh): start and
    /// end, and whether it succeeded.
    pub fetched: Option<(SystemTime, SystemTime, bool)>,
}

/// A credential resolved for one call: the API with the caller's credential set on it.
pub struct Resolved {
    pub api: Arc<Api>,
    pub used: CredentialUse,
}

/// What a token-exchange slot remembers.
enum Exchanged {
    Token {
        api: Arc<Api>,
        fingerprint: String,
        until: Instant,
    },
    Failed {
        error: GatewayError,
        until: Instant,
    },
}

type Slot = Arc<tokio::sync::Mutex<Option<Exchanged>>>;

/// An (API, principal) pair: the key of a credential.
type PrincipalKey = (String, String);

/// The sealed payload of a connect link: who may connect which API, until when.
#[derive(Serialize, Deserialize)]
pub(crate) struct ConnectClaim {
    pub p: String,
    pub a: String,
    pub exp: u64,
}

/// Per-caller credentials for one config: the store and keys are shared with the configs
/// after a reload ([`Vault::reconfigured`]); the caches are not, so no credential resolved
/// under an old config is used under a new one.
pub struct Vault {
    config: Arc<Config>,
    store: Option<Arc<Store>>,
    keyring: Option<Arc<Keyring>>,
    egress: Arc<Egress>,
    /// Built credentials by (API, principal), reused while the sealed record is the same.
    built: Mutex<HashMap<PrincipalKey, (String, Arc<Api>)>>,
    /// Token-exchange results by key digest.
    exchanges: Mutex<HashMap<[u8; 32], Slot>>,
    /// One refresh at a time per (API, principal).
    refreshes: Mutex<HashMap<(String, String), Slot>>,
}

/// Shorthand for a `credential_unavailable` error (502, retryable).
pub fn unavailable(message: impl Into<String>) -> GatewayError {
    GatewayError::new(ErrorKind::UpstreamError, message)
        .with_reason(Reason::CredentialUnavailable)
        .with_detail("retryable", serde_json::Value::Bool(true))
}

impl Vault {
    /// Opens the configured store (creating a SQLite file if needed). Fails when the store
    /// cannot be opened.
    pub fn new(config: Arc<Config>, egress: Arc<Egress>) -> Result<Vault, String> {
        let (store, keyring) = match &config.credential_store {
            Some(s) => (
                Some(Arc::new(Store::open(&s.kind)?)),
                Some(Arc::new(Keyring::new(&s.key, &s.old_keys))),
            ),
            None => (None, None),
        };
        Ok(Vault {
            config,
            store,
            keyring,
            egress,
            built: Mutex::new(HashMap::new()),
            exchanges: Mutex::new(HashMap::new()),
            refreshes: Mutex::new(HashMap::new()),
        })
    }

    /// The vault of a reloaded config: the same store when its place is unchanged (so no
    /// second SQLite handle or Redis runtime), new keys and empty caches.
    pub fn reconfigured(&self, config: Arc<Config>) -> Result<Vault, String> {
        let same_store = match (&self.config.credential_store, &config.credential_store) {
            (Some(a), Some(b)) => a.kind == b.kind,
            _ => false,
        };
        let mut v = if same_store {
            Vault {
                keyring: config
                    .credential_store
                    .as_ref()
                    .map(|s| Arc::new(Keyring::new(&s.key, &s.old_keys))),
                store: self.store.clone(),
                config: config.clone(),
                egress: self.egress.clone(),
                built: Mutex::new(HashMap::new()),
                exchanges: Mutex::new(HashMap::new()),
                refreshes: Mutex::new(HashMap::new()),
            }
        } else {
            Vault::new(config.clone(), self.egress.clone())?
        };
        v.config = config;
        Ok(v)
    }

    /// The key that seals MCP request state (`input_required` retries): derived from the
    /// credential store key, so every replica shares it; without a store, this process's.
    pub fn request_state_key(&self) -> [u8; 32] {
        use hmac::Mac;
        match &self.config.credential_store {
            Some(s) => {
                let mut m = <hmac::Hmac<Sha256> as Mac>::new_from_slice(&s.key)
                    .expect("HMAC takes any key length");
                m.update(b"api-gateway-mcp request state");
                m.finalize().into_bytes().into()
            }
            None => *PROCESS_KEY,
        }
    }

    /// Whether `principal` has a stored credential for `api` now.
    pub async fn has(&self, api: &str, principal: &str) -> bool {
        match &self.store {
            Some(s) => matches!(s.get(api, principal).await, Ok(Some(_))),
            None => false,
        }
    }

    pub fn store(&self) -> Option<&Arc<Store>> {
        self.store.as_ref()
    }

    fn keyring(&self) -> Result<&Keyring, GatewayError> {
        self.keyring
            .as_deref()
            .ok_or_else(|| unavailable("no [credential_store] is configured"))
    }

    fn stored(&self) -> Result<(&Store, &Keyring), GatewayError> {
        match (&self.store, &self.keyring) {
            (Some(s), Some(k)) => Ok((s, k)),
            _ => Err(unavailable("no [credential_store] is configured")),
        }
    }

    /// The connect link for `principal` and `api`: the page where the user stores a secret
    /// (`per_principal`) or connects an account (`user_oauth`). Sealed, valid for
    /// [`CONNECT_TTL`].
    pub fn connect_url(&self, api: &str, principal: &str) -> Option<String> {
        let keyring = self.keyring.as_ref()?;
        let claim = ConnectClaim {
            p: principal.to_string(),
            a: api.to_string(),
            exp: now_s() + CONNECT_TTL.as_secs(),
        };
        let body = serde_json::to_vec(&claim).ok()?;
        let sealed = keyring.seal("connect", "", &body).ok()?;
        Some(format!(
            "{}/connect/{}?t={}",
            self.config.mcp.public_url,
            percent_encoding::utf8_percent_encode(api, crate::types::QUERY_ENCODE),
            sealed
        ))
    }

    /// Opens a connect link's token: the principal and API it was made for, if still valid.
    pub(crate) fn open_connect(&self, token: &str) -> Option<ConnectClaim> {
        let (body, _) = self.keyring.as_ref()?.open("connect", "", token).ok()?;
        let c: ConnectClaim = serde_json::from_slice(&body).ok()?;
        (c.exp > now_s()).then_some(c)
    }

    /// Marks a connect link or OAuth state as used: true the first time only (across
    /// replicas with Redis), so a link that leaked after use, or a replayed callback, does
    /// nothing.
    pub async fn consume(&self, token: &str) -> bool {
        let Some(store) = &self.store else {
            return false;
        };
        let name = format!(
            "used:{}",
            &hex::encode(Sha256::digest(token.as_bytes()))[..32]
        );
        match store.lease(&name, CONNECT_TTL).await {
            Ok(first) => first,
            Err(e) => {
                self.store_failed(e);
                false
            }
        }
    }

    /// The credential refusal for a caller without a credential yet: `credential_required`
    /// (403) with the `connect_url` where the user fixes it.
    pub fn required(&self, api: &Api, principal: &str, why: &str) -> GatewayError {
        let mut e =
            GatewayError::new(ErrorKind::Forbidden, why).with_reason(Reason::CredentialRequired);
        if let Some(url) = self.connect_url(&api.name, principal) {
            e.message = format!("{why}; connect at {url}");
            e = e.with_detail("connect_url", serde_json::Value::String(url));
        }
        e
    }

    /// The credential stage of admission: the caller's credential for `api`.
    pub async fn resolve(
        &self,
        api: &Arc<Api>,
        dc: &DynamicCredential,
        caller: &crate::auth::Caller,
    ) -> Result<Resolved, GatewayError> {
        let principal = caller.principal.id.as_str();
        // Anonymous callers are one principal: none may hold a credential of its own.
        if caller.principal.kind == crate::auth::PrincipalKind::Anonymous {
            return Err(GatewayError::new(
                ErrorKind::Forbidden,
                format!(
                    "API {:?} acts with the caller's own credential: authenticate first (anonymous callers have none)",
                    api.name
                ),
            )
            .with_reason(Reason::CredentialRequired));
        }
        match &dc.mode {
            CredentialMode::PerPrincipal => {
                let (store, keyring) = self.stored()?;
                let rec = store
                    .get(&api.name, principal)
                    .await
                    .map_err(|e| self.store_failed(e))?;
                let Some(rec) = rec.filter(|r| r.kind == "secret") else {
                    return Err(self.required(
                        api,
                        principal,
                        &format!(
                            "API {:?} needs your own credential, and none is stored",
                            api.name
                        ),
                    ));
                };
                let api = self.built(
                    api,
                    dc,
                    &rec,
                    |plain| String::from_utf8(plain).map_err(|_| "not text".to_string()),
                    keyring,
                )?;
                Ok(Resolved {
                    api,
                    used: CredentialUse {
                        source: "per_principal",
                        fingerprint: rec.fingerprint.into(),
                        fetched: None,
                    },
                })
            }
            CredentialMode::TokenExchange(tx) => {
                let Some(token) = caller.subject_token.as_ref() else {
                    return Err(GatewayError::new(
                        ErrorKind::Forbidden,
                        format!(
                            "API {:?} acts with a token exchanged for the caller's own bearer token; authenticate with a token, not an API key",
                            api.name
                        ),
                    )
                    .with_reason(Reason::CredentialRequired));
                };
                self.exchange(api, dc, tx, token.expose()).await
            }
            CredentialMode::UserOAuth(cfg) => self.user_oauth(api, dc, cfg, principal).await,
        }
    }

    fn store_failed(&self, e: String) -> GatewayError {
        tracing::warn!(error = %e, "credential store failed");
        crate::telemetry::metrics()
            .credential_events
            .with_label_values(&["store", "failure"])
            .inc();
        unavailable("the credential store is unavailable; retry later")
    }

    /// The API with the record's credential set, built once per sealed record.
    fn built(
        &self,
        api: &Arc<Api>,
        dc: &DynamicCredential,
        rec: &Record,
        secret_of: impl FnOnce(Vec<u8>) -> Result<String, String>,
        keyring: &Keyring,
    ) -> Result<Arc<Api>, GatewayError> {
        let key = (api.name.clone(), rec.principal.clone());
        if let Some((sealed, built)) = self
            .built
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
        {
            if *sealed == rec.sealed {
                return Ok(built.clone());
            }
        }
        let secret = keyring
            .open(&rec.api, &rec.principal, &rec.sealed)
            .map_err(|e| e.to_string())
            .and_then(|(plain, _)| secret_of(plain))
            .map_err(|e| {
                tracing::warn!(api = %rec.api, principal = %rec.principal, error = %e, "a stored credential does not open");
                unavailable("the stored credential cannot be read; store it again")
            })?;
        let built = with_secret(api, dc, &secret)?;
        let mut cache = self.built.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= MAX_CACHED {
            cache.clear();
        }
        cache.insert(key, (rec.sealed.clone(), built.clone()));
        Ok(built)
    }

    /// Forgets what was built from a principal's record (after a change by this process).
    fn forget(&self, api: &str, principal: &str) {
        self.built
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&(api.to_string(), principal.to_string()));
    }

    /// Stores `secret` as `principal`'s credential for `api` (`per_principal`). Returns the
    /// record (fingerprint and dates).
    pub async fn set_secret(
        &self,
        api: &Api,
        principal: &str,
        secret: &str,
    ) -> Result<Record, GatewayError> {
        match api.dynamic_credential.as_ref().map(|d| &d.mode) {
            Some(CredentialMode::PerPrincipal) => {}
            Some(CredentialMode::UserOAuth(_)) => {
                return Err(GatewayError::invalid_arguments(format!(
                    "API {:?} connects the user's own account (user_oauth): open the connect link instead of storing a secret",
                    api.name
                )))
            }
            _ => {
                return Err(GatewayError::invalid_arguments(format!(
                    "API {:?} does not keep per-principal credentials (credentials.mode is not \"per_principal\")",
                    api.name
                )))
            }
        }
        let value = api
            .dynamic_credential
            .as_ref()
            .map(|d| d.format.replace("{secret}", secret))
            .unwrap_or_default();
        if secret.is_empty()
            || secret.len() > 16 << 10
            || http::HeaderValue::from_str(&value).is_err()
        {
            return Err(GatewayError::invalid_arguments(
                "the secret must be 1 to 16384 characters that a header can carry (no control characters)",
            ));
        }
        self.put(
            api,
            principal,
            "secret",
            secret.as_bytes(),
            fingerprint_of(secret),
            None,
        )
        .await
    }

    /// Seals and stores a record; keeps its creation date when it replaces one.
    pub(crate) async fn put(
        &self,
        api: &Api,
        principal: &str,
        kind: &str,
        plaintext: &[u8],
        fingerprint: String,
        expires: Option<u64>,
    ) -> Result<Record, GatewayError> {
        let (store, keyring) = self.stored()?;
        let sealed = keyring
            .seal(&api.name, principal, plaintext)
            .map_err(|e| unavailable(format!("cannot seal the credential: {e}")))?;
        let created = store
            .get(&api.name, principal)
            .await
            .map_err(|e| self.store_failed(e))?
            .map(|r| r.created);
        let now = now_s();
        let rec = Record {
            api: api.name.clone(),
            principal: principal.to_string(),
            kind: kind.to_string(),
            sealed,
            fingerprint,
            created: created.unwrap_or(now),
            updated: now,
            expires,
        };
        store.put(&rec).await.map_err(|e| self.store_failed(e))?;
        self.forget(&api.name, principal);
        Ok(rec)
    }

    /// Removes `principal`'s credential for `api`; a connected account is revoked first when
    /// the provider has a revocation endpoint. Returns the removed record's fingerprint.
    pub async fn delete(&self, api: &Api, principal: &str) -> Result<Option<String>, GatewayError> {
        let (store, keyring) = self.stored()?;
        let rec = store
            .get(&api.name, principal)
            .await
            .map_err(|e| self.store_failed(e))?;
        let Some(rec) = rec else {
            return Ok(None);
        };
        if let (Some(CredentialMode::UserOAuth(cfg)), "oauth") = (
            api.dynamic_credential.as_ref().map(|d| &d.mode),
            rec.kind.as_str(),
        ) {
            if let Ok((plain, _)) = keyring.open(&rec.api, &rec.principal, &rec.sealed) {
                if let Ok(tokens) = serde_json::from_slice::<oauth::Tokens>(&plain) {
                    self.revoke(cfg, &tokens).await;
                }
            }
        }
        store
            .delete(&api.name, principal)
            .await
            .map_err(|e| self.store_failed(e))?;
        self.forget(&api.name, principal);
        Ok(Some(rec.fingerprint))
    }

    /// The records of `api` (all per-caller APIs when `None`): no secret, only fingerprints.
    pub async fn list(&self, api: Option<&str>) -> Result<Vec<Record>, GatewayError> {
        let (store, _) = self.stored()?;
        let apis: Vec<String> = match api {
            Some(a) => vec![a.to_string()],
            None => self
                .config
                .apis
                .iter()
                .filter(|a| {
                    a.dynamic_credential
                        .as_ref()
                        .is_some_and(|d| d.mode.stored())
                })
                .map(|a| a.name.clone())
                .collect(),
        };
        store.list(&apis).await.map_err(|e| self.store_failed(e))
    }
}

impl Vault {
    /// Re-seals every record sealed under an old key (`old_key_envs`) with the current one.
    /// Returns (re-sealed, records in all). A record no configured key opens is reported
    /// and left as it is.
    pub async fn rotate_keys(&self) -> Result<(usize, usize), String> {
        let (store, keyring) = self.stored().map_err(|e| e.message)?;
        let all = self.list(None).await.map_err(|e| e.message)?;
        let mut resealed = 0;
        let mut unreadable = Vec::new();
        for mut rec in all.iter().cloned() {
            match keyring.open(&rec.api, &rec.principal, &rec.sealed) {
                Ok((plain, true)) => {
                    rec.sealed = keyring.seal(&rec.api, &rec.principal, &plain)?;
                    store.put(&rec).await?;
                    resealed += 1;
                }
                Ok((_, false)) => {}
                Err(e) => unreadable.push(format!("{} / {}: {e}", rec.api, rec.principal)),
            }
        }
        if !unreadable.is_empty() {
            return Err(format!(
                "{resealed} re-sealed, but {} record(s) do not open with any configured key:\n  {}",
                unreadable.len(),
                unreadable.join("\n  ")
            ));
        }
        Ok((resealed, all.len()))
    }

    /// The id of the key new records are sealed under.
    pub fn current_key_id(&self) -> Option<&str> {
        self.keyring.as_deref().map(Keyring::current_id)
    }
}

/// A per-call copy of `api` whose credential is `secret`, written as the API's format says.
fn with_secret(api: &Api, dc: &DynamicCredential, secret: &str) -> Result<Arc<Api>, GatewayError> {
    let credential = dc.with_secret(secret);
    if matches!(
        credential.placement,
        crate::config::CredentialPlacement::Header(_)
    ) && credential.header_value.is_none()
    {
        return Err(unavailable(
            "the credential contains characters a header cannot carry",
        ));
    }
    let mut a = api.clone();
    a.credential = Some(credential);
    Ok(Arc::new(a))
}

/// A secret's fingerprint as shown to people: the first 8 hex digits of its SHA-256.
pub fn fingerprint_of(secret: &str) -> String {
    cipher::fingerprint(secret.as_bytes())
}

/// The digest that keys a token exchange: the subject token, the API and what is asked for.
fn exchange_key(token: &str, api: &str, audience: Option<&str>, scope: Option<&str>) -> [u8; 32] {
    let mut h = Sha256::new();
    for part in [token, api, audience.unwrap_or(""), scope.unwrap_or("")] {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part.as_bytes());
    }
    h.finalize().into()
}

/// The slot for `key` in `map`, created if needed; the map is swept when it grows large.
fn slot<K: std::hash::Hash + Eq + Clone>(map: &Mutex<HashMap<K, Slot>>, key: &K) -> Slot {
    let mut m = map.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(s) = m.get(key) {
        return s.clone();
    }
    if m.len() >= MAX_CACHED {
        // Slots nobody waits on and whose answer has expired go first.
        let now = Instant::now();
        m.retain(|_, s| match s.try_lock() {
            Ok(g) => match &*g {
                Some(Exchanged::Token { until, .. }) | Some(Exchanged::Failed { until, .. }) => {
                    *until > now
                }
                None => false,
            },
            Err(_) => true,
        });
        if m.len() >= MAX_CACHED {
            m.clear();
        }
    }
    let s: Slot = Arc::new(tokio::sync::Mutex::new(None));
    m.insert(key.clone(), s.clone());
    s
}
