//! The observability part of the config: `[tracing]` (OTLP span export) and `[metrics]`
//! (opt-in label sets). The standard `OTEL_*` environment variables fill in what the file
//! leaves out; the file wins where both speak.

use std::time::Duration;

use serde::Deserialize;

use super::{err, ConfigError, HumanDuration};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTracing {
    enabled: Option<bool>,
    endpoint: Option<String>,
    protocol: Option<String>,
    sampling_ratio: Option<f64>,
    service_name: Option<String>,
    timeout: Option<HumanDuration>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMetrics {
    principal_label: Option<bool>,
    max_principals: Option<usize>,
}

/// How spans travel to the collector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OtlpProtocol {
    /// OTLP/HTTP with protobuf bodies, to `{endpoint}/v1/traces` (default port 4318).
    HttpProtobuf,
    /// OTLP/gRPC (default port 4317).
    Grpc,
}

/// `[tracing]`.
#[derive(Debug, Clone, PartialEq)]
pub struct TracingConfig {
    pub enabled: bool,
    /// The full export URL; `None`: from `OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT`, else the
    /// protocol's default on localhost.
    pub endpoint: Option<String>,
    pub protocol: OtlpProtocol,
    /// New traces sampled with this probability; `None`: `OTEL_TRACES_SAMPLER[_ARG]`, else all.
    pub sampling_ratio: Option<f64>,
    pub service_name: Option<String>,
    pub timeout: Option<Duration>,
}

/// `[metrics]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricsConfig {
    /// Adds `api_principal_calls_total` and `api_principal_cost_total{principal,api}`.
    pub principal_label: bool,
    /// Principals past this many share the label value `other`, so cardinality stays bounded.
    pub max_principals: usize,
}

pub(super) fn validate_tracing(
    t: RawTracing,
    lookup: &dyn Fn(&str) -> Option<String>,
    errors: &mut Vec<ConfigError>,
) -> TracingConfig {
    let env = |name: &str| lookup(name).filter(|v| !v.trim().is_empty());
    let protocol_source = t
        .protocol
        .clone()
        .map(|p| ("tracing.protocol", p))
        .or_else(|| {
            env("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
                .map(|p| ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", p))
        })
        .or_else(|| env("OTEL_EXPORTER_OTLP_PROTOCOL").map(|p| ("OTEL_EXPORTER_OTLP_PROTOCOL", p)));
    let protocol = match protocol_source {
        None => OtlpProtocol::HttpProtobuf,
        Some((_, p)) if p == "http/protobuf" => OtlpProtocol::HttpProtobuf,
        Some((_, p)) if p == "grpc" => OtlpProtocol::Grpc,
        Some((key, p)) => {
            errors.push(err(
                key,
                format!("{p:?} is not one of \"http/protobuf\", \"grpc\""),
            ));
            OtlpProtocol::HttpProtobuf
        }
    };
    let endpoint = t.endpoint.map(|e| {
        match url::Url::parse(&e) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {}
            _ => errors.push(err(
                "tracing.endpoint",
                format!("{e:?} is not an http:// or https:// URL"),
            )),
        }
        // Like OTEL_EXPORTER_OTLP_ENDPOINT, a base URL: the signal path is added for HTTP.
        let e = e.trim_end_matches('/').to_string();
        if protocol == OtlpProtocol::HttpProtobuf && !e.ends_with("/v1/traces") {
            format!("{e}/v1/traces")
        } else {
            e
        }
    });
    if let Some(r) = t.sampling_ratio {
        if !(0.0..=1.0).contains(&r) {
            errors.push(err("tracing.sampling_ratio", "must be between 0.0 and 1.0"));
        }
    }
    if t.timeout.as_ref().is_some_and(|d| d.0.is_zero()) {
        errors.push(err("tracing.timeout", "must be more than zero"));
    }
    let env_endpoint =
        env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").or_else(|| env("OTEL_EXPORTER_OTLP_ENDPOINT"));
    let disabled_by_env = env("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true"))
        || env("OTEL_TRACES_EXPORTER").is_some_and(|v| v == "none");
    let enabled = match t.enabled {
        Some(e) => e,
        None => (endpoint.is_some() || env_endpoint.is_some()) && !disabled_by_env,
    };
    TracingConfig {
        enabled,
        endpoint,
        protocol,
        sampling_ratio: t.sampling_ratio,
        service_name: t.service_name,
        timeout: t.timeout.map(|d| d.0),
    }
}

pub(super) fn validate_metrics(m: RawMetrics, errors: &mut Vec<ConfigError>) -> MetricsConfig {
    let max_principals = m.max_principals.unwrap_or(100);
    if max_principals == 0 || max_principals > 10_000 {
        errors.push(err(
            "metrics.max_principals",
            "must be between 1 and 10000 (each value is a time series)",
        ));
    }
    if m.max_principals.is_some() && m.principal_label != Some(true) {
        errors.push(err(
            "metrics.max_principals",
            "only applies with principal_label = true",
        ));
    }
    MetricsConfig {
        principal_label: m.principal_label.unwrap_or(false),
        max_principals,
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    const BASE: &str = "[auth]\nrequired = false\n[[apis]]\nname = \"a\"\n\
                        base_url = \"https://api.example.com\"\nmethods = [\"GET\"]\npaths = [\"/**\"]\n";

    fn parse(extra: &str, env: &[(&str, &str)]) -> Result<Config, crate::config::ConfigErrors> {
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::parse(&format!("{BASE}{extra}"), &move |name| {
            env.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
        })
    }

    fn error_paths(extra: &str) -> Vec<String> {
        parse(extra, &[])
            .unwrap_err()
            .0
            .into_iter()
            .map(|e| e.path)
            .collect()
    }

    #[test]
    fn tracing_is_off_unless_an_endpoint_is_named() {
        assert!(!parse("", &[]).unwrap().tracing.enabled);
        let c = parse(
            "",
            &[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318")],
        )
        .unwrap();
        assert!(c.tracing.enabled);
        assert_eq!(
            c.tracing.endpoint, None,
            "the exporter reads the variable itself"
        );
        let c = parse(
            "",
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318"),
                ("OTEL_SDK_DISABLED", "true"),
            ],
        )
        .unwrap();
        assert!(!c.tracing.enabled);
        let c = parse("[tracing]\nendpoint = \"http://127.0.0.1:4318/\"\n", &[]).unwrap();
        assert!(c.tracing.enabled);
        assert_eq!(
            c.tracing.endpoint.as_deref(),
            Some("http://127.0.0.1:4318/v1/traces")
        );
        let c = parse(
            "[tracing]\nendpoint = \"http://127.0.0.1:4317\"\nprotocol = \"grpc\"\n",
            &[],
        )
        .unwrap();
        assert_eq!(c.tracing.endpoint.as_deref(), Some("http://127.0.0.1:4317"));
        assert_eq!(c.tracing.protocol, super::OtlpProtocol::Grpc);
        let c = parse("", &[("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")]).unwrap();
        assert_eq!(c.tracing.protocol, super::OtlpProtocol::Grpc);
    }

    #[test]
    fn tracing_errors_name_the_key() {
        assert_eq!(
            error_paths("[tracing]\nsampling_ratio = 1.5\n"),
            ["tracing.sampling_ratio"]
        );
        assert_eq!(
            error_paths("[tracing]\nprotocol = \"http/json\"\n"),
            ["tracing.protocol"]
        );
        assert_eq!(
            error_paths("[tracing]\nendpoint = \"collector:4318\"\n"),
            ["tracing.endpoint"]
        );
        assert_eq!(
            error_paths("[tracing]\nexporter = \"jaeger\"\n"),
            ["tracing.exporter"]
        );
        let e = parse("", &[("OTEL_EXPORTER_OTLP_PROTOCOL", "udp")]).unwrap_err();
        assert_eq!(e.0[0].path, "OTEL_EXPORTER_OTLP_PROTOCOL");
    }

    #[test]
    fn principal_label_is_opt_in_and_capped() {
        let c = parse("", &[]).unwrap();
        assert!(!c.metrics.principal_label);
        let c = parse(
            "[metrics]\nprincipal_label = true\nmax_principals = 5\n",
            &[],
        )
        .unwrap();
        assert!(c.metrics.principal_label);
        assert_eq!(c.metrics.max_principals, 5);
        assert_eq!(
            error_paths("[metrics]\nmax_principals = 5\n"),
            ["metrics.max_principals"]
        );
        assert_eq!(
            error_paths("[metrics]\nprincipal_label = true\nmax_principals = 0\n"),
            ["metrics.max_principals"]
        );
    }
}
