//! The vault's OAuth client: RFC 8693 token exchange, and the `user_oauth` connect flow
//! (authorization code with PKCE, RFC 9207 `iss` check, refresh before expiry, revocation on
//! disconnect). Every request goes through the egress guard, to a target built from the
//! API's `credentials` settings.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::{
    exchange_key, fingerprint_of, now_s, slot, unavailable, with_secret, CredentialUse, Exchanged,
    Resolved, Vault,
};
use crate::auth::oauth2::{client_basic, form_content_type, form_encode};
use crate::config::{Api, ClientAuth, DynamicCredential, OAuthClient, TokenExchange, UserOAuth};
use crate::egress::OutboundRequest;
use crate::error::GatewayError;

/// A connected account's tokens, as sealed in the store.
#[derive(Serialize, Deserialize)]
pub struct Tokens {
    pub access_token: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_token: Option<String>,
    /// Unix seconds; `None` when the provider did not say.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<u64>,
}

/// What the sealed `state` of an authorization request carries. Sealed with AES-GCM, so the
/// PKCE verifier it holds is never visible to the browser or the authorization server.
#[derive(Serialize, Deserialize)]
struct State {
    p: String,
    a: String,
    v: String,
    exp: u64,
    /// SHA-256 (hex) of the nonce in the browser's sign-in cookie.
    c: String,
}

/// A successful token endpoint answer.
struct Issued {
    access_token: String,
    refresh_token: Option<String>,
    expires_in: Option<u64>,
}

/// The egress target of an OAuth endpoint.
fn target(name: &str, url: &str, client: &OAuthClient) -> Result<(Api, String), GatewayError> {
    let api = Api::internal(name, url, client.allow_private_network, client.timeout)
        .map_err(|e| unavailable(format!("{name}: {e}")))?;
    let path = api.base.request_path();
    Ok((api, path))
}

impl Vault {
    /// POSTs a form to an OAuth endpoint with the client's authentication; returns the
    /// status and the JSON answer.
    async fn post_form(
        &self,
        name: &str,
        url: &str,
        client: &OAuthClient,
        params: &[(&str, &str)],
    ) -> Result<(u16, Value), GatewayError> {
        let (api, path) = target(name, url, client)?;
        let mut pairs: Vec<(&str, &str)> = params.to_vec();
        let mut headers = vec![form_content_type()];
        match client.client_auth {
            ClientAuth::Basic => headers.push(client_basic(
                &client.client_id,
                client.client_secret.as_deref(),
            )),
            ClientAuth::Post => {
                pairs.push(("client_id", &client.client_id));
                if let Some(s) = &client.client_secret {
                    pairs.push(("client_secret", s));
                }
            }
        }
        let resp = self
            .egress
            .fetch(
                &api,
                OutboundRequest {
                    method: http::Method::POST,
                    path_and_query: path,
                    headers,
                    body: Some(Bytes::from(form_encode(&pairs))),
                },
                256 << 10,
            )
            .await
            .map_err(|e| {
                tracing::warn!(endpoint = name, error = %e.message, "OAuth endpoint unreachable");
                unavailable(format!("the {name} endpoint is unavailable; retry later"))
            })?;
        let body = serde_json::from_slice(&resp.body).unwrap_or(Value::Null);
        Ok((resp.status, body))
    }

    /// A token endpoint's answer as tokens, or why it is not one.
    fn issued(name: &str, status: u16, body: &Value) -> Result<Issued, GatewayError> {
        let access = body.get("access_token").and_then(Value::as_str);
        match (status, access) {
            (200, Some(t)) if !t.is_empty() => Ok(Issued {
                access_token: t.to_string(),
                refresh_token: body
                    .get("refresh_token")
                    .and_then(Value::as_str)
                    .map(str::to_string),
                expires_in: body.get("expires_in").and_then(Value::as_u64),
            }),
            _ => {
                let code = body
                    .get("error")
                    .and_then(Value::as_str)
                    .unwrap_or("no token");
                tracing::warn!(
                    endpoint = name,
                    status,
                    error = code,
                    "token endpoint refused"
                );
                Err(unavailable(format!(
                    "the {name} endpoint refused ({status}, {code})"
                )))
            }
        }
    }

    /// `token_exchange`: one exchange in flight per key, its answer reused until `exp` minus
    /// the skew; a failure is remembered for `failure_ttl`.
    pub(super) async fn exchange(
        &self,
        api: &Arc<Api>,
        dc: &DynamicCredential,
        tx: &TokenExchange,
        subject: &str,
    ) -> Result<Resolved, GatewayError> {
        let m = crate::telemetry::metrics();
        let key = exchange_key(
            subject,
            &api.name,
            tx.audience.as_deref(),
            tx.scope.as_deref(),
        );
        let slot = slot(&self.exchanges, &key);
        let mut held = slot.lock().await;
        let now = Instant::now();
        match &*held {
            Some(Exchanged::Token {
                api,
                fingerprint,
                until,
            }) if *until > now => {
                m.credential_events
                    .with_label_values(&[&api.name, "exchange_cache_hit"])
                    .inc();
                return Ok(Resolved {
                    api: api.clone(),
                    used: CredentialUse {
                        source: "token_exchange",
                        fingerprint: fingerprint.as_str().into(),
                        fetched: None,
                    },
                });
            }
            Some(Exchanged::Failed { error, until }) if *until > now => {
                m.credential_events
                    .with_label_values(&[&api.name, "exchange_failure_cached"])
                    .inc();
                return Err(error.clone());
            }
            _ => {}
        }
        let started = SystemTime::now();
        let mut params = vec![
            (
                "grant_type",
                "urn:ietf:params:oauth:grant-type:token-exchange",
            ),
            ("subject_token", subject),
            (
                "subject_token_type",
                "urn:ietf:params:oauth:token-type:access_token",
            ),
            ("requested_token_type", tx.requested_token_type.as_str()),
        ];
        for (k, v) in [
            ("audience", &tx.audience),
            ("resource", &tx.resource),
            ("scope", &tx.scope),
        ] {
            if let Some(v) = v {
                params.push((k, v.as_str()));
            }
        }
        let answer = self
            .post_form(
                "token exchange",
                &tx.client.token_endpoint,
                &tx.client,
                &params,
            )
            .await
            .and_then(|(status, body)| Self::issued("token exchange", status, &body));
        let ended = SystemTime::now();
        match answer {
            Ok(issued) => {
                m.credential_events
                    .with_label_values(&[&api.name, "exchange"])
                    .inc();
                let built = with_secret(api, dc, &issued.access_token)?;
                let fingerprint = fingerprint_of(&issued.access_token);
                // Used until `exp` minus the skew; without `expires_in`, for the skew alone
                // (at least a second), so a token of unknown life is not kept long.
                let life = issued
                    .expires_in
                    .map_or(tx.refresh_skew, |s| {
                        Duration::from_secs(s).saturating_sub(tx.refresh_skew)
                    })
                    .max(Duration::from_secs(1));
                *held = Some(Exchanged::Token {
                    api: built.clone(),
                    fingerprint: fingerprint.clone(),
                    until: Instant::now() + life,
                });
                Ok(Resolved {
                    api: built,
                    used: CredentialUse {
                        source: "token_exchange",
                        fingerprint: fingerprint.into(),
                        fetched: Some((started, ended, true)),
                    },
                })
            }
            Err(e) => {
                m.credential_events
                    .with_label_values(&[&api.name, "exchange_failure"])
                    .inc();
                *held = Some(Exchanged::Failed {
                    error: e.clone(),
                    until: Instant::now() + tx.failure_ttl,
                });
                Err(e)
            }
        }
    }

    /// `user_oauth`: the connected account's access token, refreshed first when it is about
    /// to expire (one refresh per principal and API at a time; with Redis, across replicas).
    pub(super) async fn user_oauth(
        &self,
        api: &Arc<Api>,
        dc: &DynamicCredential,
        cfg: &UserOAuth,
        principal: &str,
    ) -> Result<Resolved, GatewayError> {
        let (store, keyring) = self.stored()?;
        let missing = || {
            self.required(
                api,
                principal,
                &format!(
                    "API {:?} acts with your own account, which is not connected",
                    api.name
                ),
            )
        };
        let fresh = |r: &super::Record| {
            r.expires
                .is_none_or(|e| e > now_s() + cfg.refresh_skew.as_secs())
        };
        let get = || async {
            store
                .get(&api.name, principal)
                .await
                .map_err(|e| self.store_failed(e))
                .map(|r| r.filter(|r| r.kind == "oauth"))
        };
        let Some(mut rec) = get().await? else {
            return Err(missing());
        };
        let mut fetched = None;
        if !fresh(&rec) {
            let key = (api.name.clone(), principal.to_string());
            let slot = slot(&self.refreshes, &key);
            let _one = slot.lock().await;
            // Another call (or replica) may have refreshed while this one waited.
            rec = get().await?.ok_or_else(missing)?;
            if !fresh(&rec) {
                let lease = format!("{}:{principal}", api.name);
                let mut waited = Duration::ZERO;
                while !store
                    .lease(&lease, Duration::from_secs(10))
                    .await
                    .map_err(|e| self.store_failed(e))?
                {
                    if waited > Duration::from_secs(10) {
                        return Err(unavailable(
                            "a token refresh by another replica did not finish; retry",
                        ));
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    waited += Duration::from_millis(50);
                }
                let result = async {
                    rec = get().await?.ok_or_else(missing)?;
                    if !fresh(&rec) {
                        let started = SystemTime::now();
                        let r = self.refresh(api, cfg, keyring, &rec).await;
                        fetched = Some((started, SystemTime::now(), r.is_ok()));
                        match r {
                            Ok(next) => rec = next,
                            Err(e) => return Err(e),
                        }
                    }
                    Ok(())
                }
                .await;
                store.release(&lease).await;
                result?;
            }
        }
        let api_built = self.built(
            api,
            dc,
            &rec,
            |plain| {
                serde_json::from_slice::<Tokens>(&plain)
                    .map(|t| t.access_token)
                    .map_err(|e| e.to_string())
            },
            keyring,
        )?;
        Ok(Resolved {
            api: api_built,
            used: CredentialUse {
                source: "user_oauth",
                fingerprint: rec.fingerprint.into(),
                fetched,
            },
        })
    }

    /// Refreshes a connected account's tokens and stores them. A refused refresh (the grant
    /// was revoked or expired) removes the record: the user must connect again.
    async fn refresh(
        &self,
        api: &Api,
        cfg: &UserOAuth,
        keyring: &super::Keyring,
        rec: &super::Record,
    ) -> Result<super::Record, GatewayError> {
        let m = crate::telemetry::metrics();
        let tokens: Tokens = keyring
            .open(&rec.api, &rec.principal, &rec.sealed)
            .ok()
            .and_then(|(p, _)| serde_json::from_slice(&p).ok())
            .ok_or_else(|| unavailable("the stored tokens cannot be read; connect again"))?;
        let Some(refresh) = tokens.refresh_token.clone() else {
            return Err(self.required(
                api,
                &rec.principal,
                "the connected account's token expired and cannot be refreshed",
            ));
        };
        let mut params = vec![
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh.as_str()),
        ];
        if let Some(s) = &cfg.scope {
            params.push(("scope", s));
        }
        let (status, body) = self
            .post_form("token", &cfg.client.token_endpoint, &cfg.client, &params)
            .await
            .inspect_err(|_| {
                m.credential_events
                    .with_label_values(&[&api.name, "refresh_failure"])
                    .inc();
            })?;
        if status == 400 || status == 401 {
            // invalid_grant and friends: the grant is gone.
            m.credential_events
                .with_label_values(&[&api.name, "refresh_failure"])
                .inc();
            if let Some(s) = self.store() {
                let _ = s.delete(&api.name, &rec.principal).await;
            }
            return Err(self.required(
                api,
                &rec.principal,
                "the connected account's grant is no longer valid; connect again",
            ));
        }
        let issued = Self::issued("token", status, &body).inspect_err(|_| {
            m.credential_events
                .with_label_values(&[&api.name, "refresh_failure"])
                .inc();
        })?;
        m.credential_events
            .with_label_values(&[&api.name, "refresh"])
            .inc();
        self.store_tokens(api, &rec.principal, issued, Some(refresh))
            .await
    }

    async fn store_tokens(
        &self,
        api: &Api,
        principal: &str,
        issued: Issued,
        old_refresh: Option<String>,
    ) -> Result<super::Record, GatewayError> {
        let expires_at = issued.expires_in.map(|s| now_s() + s);
        let fingerprint = fingerprint_of(&issued.access_token);
        let tokens = Tokens {
            access_token: issued.access_token,
            refresh_token: issued.refresh_token.or(old_refresh),
            expires_at,
        };
        let plain = serde_json::to_vec(&tokens).map_err(|e| unavailable(e.to_string()))?;
        self.put(api, principal, "oauth", &plain, fingerprint, expires_at)
            .await
    }

    /// Revokes a connected account's tokens (RFC 7009) when the provider has a revocation
    /// endpoint; a failure is logged, the disconnect goes on.
    pub(super) async fn revoke(&self, cfg: &UserOAuth, tokens: &Tokens) {
        let Some(url) = &cfg.revocation_endpoint else {
            return;
        };
        let (token, hint) = match &tokens.refresh_token {
            Some(r) => (r.as_str(), "refresh_token"),
            None => (tokens.access_token.as_str(), "access_token"),
        };
        match self
            .post_form(
                "revocation",
                url,
                &cfg.client,
                &[("token", token), ("token_type_hint", hint)],
            )
            .await
        {
            Ok((200, _)) => {}
            Ok((status, _)) => tracing::warn!(status, "token revocation refused"),
            Err(e) => tracing::warn!(error = %e.message, "token revocation failed"),
        }
    }

    /// The authorization request for a connect link's claim: where to send the browser.
    pub fn authorize_url(
        &self,
        api: &Api,
        principal: &str,
        browser_nonce: &str,
    ) -> Result<String, GatewayError> {
        let Some(crate::config::CredentialMode::UserOAuth(cfg)) =
            api.dynamic_credential.as_ref().map(|d| &d.mode)
        else {
            return Err(GatewayError::invalid_arguments(
                "this API does not connect accounts",
            ));
        };
        let keyring = self.keyring()?;
        let mut v = [0u8; 32];
        getrandom::fill(&mut v).map_err(|e| unavailable(e.to_string()))?;
        let verifier = URL_SAFE_NO_PAD.encode(v);
        let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
        let state = State {
            p: principal.to_string(),
            a: api.name.clone(),
            v: verifier,
            exp: now_s() + super::CONNECT_TTL.as_secs(),
            c: hex::encode(Sha256::digest(browser_nonce.as_bytes())),
        };
        let sealed = keyring
            .seal(
                "oauth-state",
                "",
                &serde_json::to_vec(&state).unwrap_or_default(),
            )
            .map_err(unavailable)?;
        let mut url =
            url::Url::parse(&cfg.authorization_endpoint).map_err(|e| unavailable(e.to_string()))?;
        {
            let mut q = url.query_pairs_mut();
            q.append_pair("response_type", "code")
                .append_pair("client_id", &cfg.client.client_id)
                .append_pair("redirect_uri", &self.redirect_uri())
                .append_pair("state", &sealed)
                .append_pair("code_challenge", &challenge)
                .append_pair("code_challenge_method", "S256");
            if let Some(s) = &cfg.scope {
                q.append_pair("scope", s);
            }
        }
        Ok(url.to_string())
    }

    /// Where the authorization server sends the browser back.
    pub fn redirect_uri(&self) -> String {
        format!("{}/oauth/callback", self.config.mcp.public_url)
    }

    /// The callback: checks `state` and `iss`, redeems the code with the PKCE verifier and
    /// stores the tokens. Returns the API and principal connected, and the record.
    pub async fn callback(
        &self,
        code: &str,
        state: &str,
        iss: Option<&str>,
        browser_nonce: &str,
    ) -> Result<(String, String, super::Record), GatewayError> {
        let keyring = self.keyring()?;
        let bad = |m: &str| GatewayError::invalid_arguments(m.to_string());
        let st: State = keyring
            .open("oauth-state", "", state)
            .ok()
            .and_then(|(p, _)| serde_json::from_slice(&p).ok())
            .ok_or_else(|| bad("the state of this sign-in is not one this gateway issued"))?;
        if st.exp <= now_s() {
            return Err(bad(
                "this sign-in took too long; open the connect link again",
            ));
        }
        // Only the browser that opened the connect link may finish its sign-in.
        let presented = hex::encode(Sha256::digest(browser_nonce.as_bytes()));
        if browser_nonce.is_empty()
            || !bool::from(subtle::ConstantTimeEq::ct_eq(
                presented.as_bytes(),
                st.c.as_bytes(),
            ))
        {
            return Err(bad(
                "this sign-in was started in another browser; open the connect link in this one",
            ));
        }
        let api = self
            .config
            .api(&st.a)
            .ok_or_else(|| bad("the API of this sign-in is no longer configured"))?;
        let Some(crate::config::CredentialMode::UserOAuth(cfg)) =
            api.dynamic_credential.as_ref().map(|d| &d.mode)
        else {
            return Err(bad("the API of this sign-in no longer connects accounts"));
        };
        // RFC 9207: a server that names itself must be the one configured.
        if let (Some(expected), Some(got)) = (&cfg.issuer, iss) {
            if expected != got {
                return Err(bad("the authorization server's iss does not match credentials.issuer (mix-up attack?)"));
            }
        }
        if !self.consume(state).await {
            return Err(bad(
                "this sign-in was completed already; open the connect link again",
            ));
        }
        let redirect = self.redirect_uri();
        let (status, body) = self
            .post_form(
                "token",
                &cfg.client.token_endpoint,
                &cfg.client,
                &[
                    ("grant_type", "authorization_code"),
                    ("code", code),
                    ("redirect_uri", &redirect),
                    ("code_verifier", &st.v),
                ],
            )
            .await?;
        let issued = Self::issued("token", status, &body)?;
        let rec = self.store_tokens(api, &st.p, issued, None).await?;
        crate::telemetry::metrics()
            .credential_events
            .with_label_values(&[&api.name, "connect"])
            .inc();
        Ok((st.a, st.p, rec))
    }
}
