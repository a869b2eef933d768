//! TLS on the gateway's own listeners (`[server.tls]`), with rustls through Pingora.
//!
//! The certificate, key and client CA are loaded and checked when the config is validated,
//! so a bad file is a config error naming its key (`check` reports it too), never a panic in
//! Pingora's acceptor. Client certificates (mTLS) are verified against `client_ca_file`.

use std::path::PathBuf;
use std::sync::Arc;

use pingora::tls::{
    load_certs_and_key_files, ClientCertVerifier, RootCertStore, ServerConfig, WebPkiClientVerifier,
};
use serde::Deserialize;

use super::ConfigError;

/// `[server.tls]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    cert_file: Option<String>,
    key_file: Option<String>,
    client_ca_file: Option<String>,
    client_auth: Option<ClientAuth>,
    listeners: Option<Vec<Listener>>,
}

/// `server.tls.client_auth`: whether a client without a certificate is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum ClientAuth {
    Required,
    Optional,
}

/// The gateway's listeners, by the names `server.tls.listeners` uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Listener {
    Mcp,
    Proxy,
    Admin,
}

/// Validated TLS settings.
#[derive(Debug, Clone)]
pub struct TlsConfig {
    /// PEM certificate chain, leaf first.
    pub cert_file: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
    /// PEM CA bundle client certificates must chain to (mTLS). `None`: no client certificates.
    pub client_ca_file: Option<PathBuf>,
    /// With a client CA: whether a client without a certificate is refused (the default) or
    /// let through to the gateway's own authentication.
    pub client_auth_required: bool,
    /// The listeners that use TLS. Default: the MCP and proxy listeners; the admin listener
    /// stays plain so kubelet probes and Prometheus need no certificate.
    pub listeners: Vec<Listener>,
}

impl TlsConfig {
    pub fn covers(&self, listener: Listener) -> bool {
        self.listeners.contains(&listener)
    }

    /// The client-certificate verifier, when mTLS is configured.
    pub fn client_verifier(&self) -> Result<Option<Arc<dyn ClientCertVerifier>>, String> {
        let Some(ca) = &self.client_ca_file else {
            return Ok(None);
        };
        pingora::tls::install_default_crypto_provider();
        let mut roots = RootCertStore::empty();
        pingora::tls::load_ca_file_into_store(ca, &mut roots)
            .map_err(|e| format!("cannot read {}: {e}", ca.display()))?;
        if roots.is_empty() {
            return Err(format!("{} holds no CA certificate", ca.display()));
        }
        let builder = WebPkiClientVerifier::builder(Arc::new(roots));
        let builder = if self.client_auth_required {
            builder
        } else {
            builder.allow_unauthenticated()
        };
        builder
            .build()
            .map(|v| Some(v as Arc<dyn ClientCertVerifier>))
            .map_err(|e| format!("cannot use {} to verify clients: {e}", ca.display()))
    }

    /// Pingora's settings for one listener. Call only on a validated config: Pingora panics
    /// on files it cannot load, and validation has loaded them already.
    pub fn settings(&self) -> Result<pingora::listeners::tls::TlsSettings, String> {
        let (cert, key) = (path_str(&self.cert_file), path_str(&self.key_file));
        let mut s = pingora::listeners::tls::TlsSettings::intermediate(&cert, &key)
            .map_err(|e| e.to_string())?;
        if let Some(v) = self.client_verifier()? {
            s.set_client_cert_verifier(v);
        }
        Ok(s)
    }
}

fn path_str(p: &std::path::Path) -> String {
    p.to_string_lossy().into_owned()
}

/// Validates `[server.tls]`: every file is loaded and the key must match the certificate.
pub fn validate(raw: Option<RawTls>, errors: &mut Vec<ConfigError>) -> Option<TlsConfig> {
    let raw = raw?;
    let err = |path: &str, msg: String| super::config_error(path, msg);
    let (Some(cert), Some(key)) = (raw.cert_file, raw.key_file) else {
        errors.push(err(
            "server.tls",
            "needs both cert_file and key_file (PEM files)".into(),
        ));
        return None;
    };
    let listeners = match raw.listeners {
        None => vec![Listener::Mcp, Listener::Proxy],
        Some(v) => {
            if v.is_empty() {
                errors.push(err(
                    "server.tls.listeners",
                    "names no listener; remove [server.tls] to serve plain HTTP".into(),
                ));
            }
            v
        }
    };
    let client_auth_required = raw.client_auth != Some(ClientAuth::Optional);
    if raw.client_auth.is_some() && raw.client_ca_file.is_none() {
        errors.push(err(
            "server.tls.client_auth",
            "only applies with client_ca_file (the CA client certificates must chain to)".into(),
        ));
    }
    let tls = TlsConfig {
        cert_file: cert.into(),
        key_file: key.into(),
        client_ca_file: raw.client_ca_file.map(PathBuf::from),
        client_auth_required,
        listeners,
    };
    let mut ok = true;
    for (key, path) in [
        ("server.tls.cert_file", &tls.cert_file),
        ("server.tls.key_file", &tls.key_file),
    ] {
        if let Err(e) = std::fs::metadata(path) {
            errors.push(err(key, format!("cannot read {}: {e}", path.display())));
            ok = false;
        }
    }
    if ok {
        if let Err(e) = check_pair(&tls) {
            errors.push(err("server.tls.cert_file", e));
        }
    }
    if let Err(e) = tls.client_verifier() {
        errors.push(err("server.tls.client_ca_file", e));
    }
    Some(tls)
}

/// Loads the certificate chain and key as Pingora will, and builds a rustls server config
/// with them, which fails when the key does not belong to the certificate.
fn check_pair(tls: &TlsConfig) -> Result<(), String> {
    pingora::tls::install_default_crypto_provider();
    let (cert, key) = (path_str(&tls.cert_file), path_str(&tls.key_file));
    let loaded = load_certs_and_key_files(&cert, &key).map_err(|e| e.to_string())?;
    let Some((certs, key)) = loaded else {
        return Err(format!(
            "{cert} and {} must hold a PEM certificate and a PEM private key",
            tls.key_file.display()
        ));
    };
    ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map(|_| ())
        .map_err(|e| format!("the key does not fit the certificate: {e}"))
}
