//! OTLP export of request spans (`--otlp-endpoint`), off by default: the OpenTelemetry SDK's
//! batch processor sends them, as OTLP/HTTP protobuf, to a collector from a thread of its own,
//! so no request waits for it (a collector that is down loses spans, never requests).

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::trace::{SdkTracerProvider, Tracer};

/// Where spans go: `http://host:port` (the collector's OTLP/HTTP port, 4318 by convention) gets
/// `/v1/traces`; a URL with a path is used as it is. Only plain HTTP: run the collector beside
/// the node (a TLS link to it is not built).
pub fn traces_url(endpoint: &str) -> anyhow::Result<String> {
    let rest = endpoint.strip_prefix("http://").ok_or_else(|| {
        anyhow::anyhow!(
            "--otlp-endpoint must be an http:// URL of an OTLP/HTTP collector, for example \
             http://127.0.0.1:4318 (not {endpoint:?}; TLS to the collector is not supported)"
        )
    })?;
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    if host.is_empty() || host.contains(char::is_whitespace) {
        anyhow::bail!("--otlp-endpoint {endpoint:?} names no host");
    }
    Ok(if path.is_empty() {
        format!("http://{host}/v1/traces")
    } else {
        endpoint.to_owned()
    })
}

/// The tracer provider exporting to `endpoint` (shut it down at exit to flush what is queued),
/// and its tracer. The service is `meridian` unless `OTEL_SERVICE_NAME` names another (one per
/// region makes a trace across regions easy to read).
pub fn start(endpoint: &str) -> anyhow::Result<(SdkTracerProvider, Tracer)> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_endpoint(traces_url(endpoint)?)
        .build()?;
    let mut resource = opentelemetry_sdk::Resource::builder();
    if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
        resource = resource.with_service_name("meridian");
    }
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource.build())
        .build();
    let tracer = provider.tracer("meridian");
    Ok((provider, tracer))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_endpoint_is_a_collectors_http_url() {
        assert_eq!(
            traces_url("http://127.0.0.1:4318").unwrap(),
            "http://127.0.0.1:4318/v1/traces"
        );
        assert_eq!(
            traces_url("http://otel:4318/custom/traces").unwrap(),
            "http://otel:4318/custom/traces"
        );
        for bad in ["https://otel:4318", "otel:4318", "http://", ""] {
            assert!(traces_url(bad).is_err(), "{bad:?}");
        }
    }
}
