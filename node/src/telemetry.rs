//! Logs to stderr (`RUST_LOG`), and, when an OTLP endpoint is configured, the spans of calls
//! exported over OTLP/HTTP (protobuf) — off by default. The spans of a call carry its trace id
//! (`capmesh_mesh::trace::link`), so a collector shows the caller's and the provider's spans in
//! the trace the agent's `traceparent` started.

use anyhow::Context;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::{Resource, trace::SdkTracerProvider};
use tracing_subscriber::{Layer, filter::Targets, layer::SubscriberExt, util::SubscriberInitExt};

/// The OTLP/HTTP path of traces, appended to an endpoint given without it.
const TRACES_PATH: &str = "/v1/traces";

/// Installed telemetry; dropping it flushes and stops the exporter.
#[derive(Debug)]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

/// Sets up logging, and span export to `otlp` (an `http://host:port` base, or the full
/// `…/v1/traces` URL) when given. Call once, first thing in `main`.
pub fn init(otlp: Option<&str>) -> anyhow::Result<Telemetry> {
    let logs = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_filter(tracing_subscriber::EnvFilter::from_default_env());
    let Some(endpoint) = otlp else {
        tracing_subscriber::registry().with(logs).try_init()?;
        return Ok(Telemetry { provider: None });
    };
    let url = if endpoint.trim_end_matches('/').ends_with(TRACES_PATH) {
        endpoint.to_string()
    } else {
        format!("{}{TRACES_PATH}", endpoint.trim_end_matches('/'))
    };
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_endpoint(url.clone())
        .build()
        .with_context(|| format!("cannot export spans to {url}"))?;
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(Resource::builder().with_service_name("capmesh").build())
        .build();
    // The spans of calls: the caller's (`call`, capmesh-agents) and the provider's (`serve`).
    let calls = Targets::new()
        .with_target("capmesh_agents", tracing::Level::INFO)
        .with_target("capmesh_market", tracing::Level::INFO);
    let spans =
        tracing_opentelemetry::layer().with_tracer(provider.tracer("capmesh")).with_filter(calls);
    tracing_subscriber::registry().with(logs).with(spans).try_init()?;
    tracing::info!(endpoint = %url, "exporting call spans over OTLP");
    Ok(Telemetry { provider: Some(provider) })
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take()
            && let Err(e) = provider.shutdown()
        {
            eprintln!("warning: the OTLP exporter did not flush: {e}");
        }
    }
}
