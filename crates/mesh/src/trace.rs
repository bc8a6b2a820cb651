//! One trace id through a call's log spans and, when the node exports spans over OTLP, through
//! the exported spans: the span of a call is made the child of a remote span in the call's
//! trace (the agent's W3C trace id), so a collector shows the caller's and the provider's spans
//! under the trace the agent started.

use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// A trace id as W3C Trace Context writes it: 32 lowercase hex digits.
pub fn trace_hex(trace: &[u8; 16]) -> String {
    trace.iter().map(|b| format!("{b:02x}")).collect()
}

/// A span named for the call, in trace `trace`: its log lines carry `trace=<hex>`, and its
/// exported span (if the node exports any) belongs to that trace. Call before entering it.
pub fn link(span: &tracing::Span, trace: &[u8; 16]) {
    if trace.iter().all(|b| *b == 0) {
        return; // not a valid W3C trace id: the exporter picks one
    }
    // The remote parent's span id is not carried by the protocol: one derived from the trace
    // id stands for "the agent's span", the same on both nodes.
    let mut parent = [0u8; 8];
    parent.copy_from_slice(&blake3::hash(trace).as_bytes()[..8]);
    if parent == [0; 8] {
        parent[7] = 1;
    }
    let remote = SpanContext::new(
        TraceId::from_bytes(*trace),
        SpanId::from_bytes(parent),
        TraceFlags::SAMPLED,
        true,
        TraceState::default(),
    );
    // Without an OpenTelemetry layer (no OTLP configured) there is nothing to link: ignored.
    let _ = span.set_parent(opentelemetry::Context::new().with_remote_span_context(remote));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_is_w3c_text() {
        let mut t = [0u8; 16];
        t[0] = 0x4b;
        t[15] = 0x36;
        assert_eq!(trace_hex(&t), "4b000000000000000000000000000036");
    }

    #[test]
    fn linking_without_a_layer_is_harmless() {
        let span = tracing::info_span!("call");
        link(&span, &[1; 16]);
        link(&span, &[0; 16]);
    }
}
