//! Logs to stderr, and, when an OTLP endpoint is configured, the spans of calls exported over
//! OTLP/HTTP (protobuf) — off by default. The spans of a call carry its trace id
//! (`capmesh_mesh::trace::link`), so a collector shows the caller's and the provider's spans in
//! the trace the agent's `traceparent` started.
//!
//! Logs: `RUST_LOG` when set (tracing's `EnvFilter` syntax); otherwise a running node logs
//! capmesh's own events at info (what an operator needs: identity, addresses, bootstrap,
//! capabilities served, shutdown) and everything else at warn, and a one-shot command only
//! warnings. Text for people (colour only on a terminal) or one JSON object per line.

use std::io::IsTerminal;

use anyhow::Context;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::{Resource, trace::SdkTracerProvider};
use tracing_subscriber::{
    EnvFilter, Layer, filter::Targets, layer::SubscriberExt, registry::LookupSpan,
    util::SubscriberInitExt,
};

/// The OTLP/HTTP path of traces, appended to an endpoint given without it.
const TRACES_PATH: &str = "/v1/traces";

/// capmesh's crates, logged at info by a running node when `RUST_LOG` is not set.
const NODE_TARGETS: &[&str] = &[
    "capmesh",
    "capmesh_net",
    "capmesh_mesh",
    "capmesh_market",
    "capmesh_agents",
    "capmesh_api",
    "capmesh_mcp",
    "capmesh_store",
    "capmesh_exec",
    "capmesh_policy",
];

/// How log lines are written (`--log-format`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One human-readable line per event.
    #[default]
    Text,
    /// One JSON object per event (`timestamp`, `level`, `target`, `fields`, `spans`).
    Json,
}

/// What runs, which sets the default level when `RUST_LOG` is not set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verbosity {
    /// A node (`run`, `mcp`): capmesh at info, the rest at warn.
    Node,
    /// A one-shot command: warnings only.
    Command,
}

impl Verbosity {
    fn default_filter(self) -> String {
        match self {
            Verbosity::Node => {
                let mut f = String::from("warn");
                for target in NODE_TARGETS {
                    f.push_str(&format!(",{target}=info"));
                }
                f
            }
            Verbosity::Command => "warn".into(),
        }
    }
}

/// The filter: `RUST_LOG` when set (a broken one is an error, not silence), else `verbosity`'s.
fn filter(verbosity: Verbosity) -> anyhow::Result<EnvFilter> {
    match std::env::var(EnvFilter::DEFAULT_ENV) {
        Ok(spec) if !spec.trim().is_empty() => EnvFilter::try_new(&spec)
            .with_context(|| format!("RUST_LOG={spec:?} is not a log filter")),
        _ => Ok(EnvFilter::new(verbosity.default_filter())),
    }
}

/// The stderr log layer in `format`; colour only when stderr is a terminal.
fn log_layer<S>(format: LogFormat, filter: EnvFilter) -> Box<dyn Layer<S> + Send + Sync>
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
{
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    match format {
        LogFormat::Text => {
            fmt.with_ansi(std::io::stderr().is_terminal()).with_filter(filter).boxed()
        }
        LogFormat::Json => fmt.json().with_ansi(false).with_filter(filter).boxed(),
    }
}

/// Installed telemetry; dropping it flushes and stops the exporter.
#[derive(Debug)]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

/// Sets up logging, and span export to `otlp` (an `http://host:port` base, or the full
/// `…/v1/traces` URL) when given. Call once, first thing in `main`.
pub fn init(
    format: LogFormat,
    verbosity: Verbosity,
    otlp: Option<&str>,
) -> anyhow::Result<Telemetry> {
    let logs = log_layer(format, filter(verbosity)?);
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
