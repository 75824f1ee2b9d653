//! One trace per notification across processes: the W3C `traceparent` of the span that wrote a
//! message travels in the message's NATS headers, and whoever handles the message continues
//! that trace. The API starts it (or continues the caller's), the dispatcher carries it into
//! every delivery job, FCM call and event, and the projector's spans join it.
//!
//! Spans get their OpenTelemetry context from the `tracing-opentelemetry` layer that
//! `xibaar-telemetry` installs; without that layer the functions here do nothing.

use std::collections::HashMap;

use async_nats::HeaderMap;
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::TraceContextExt;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing_opentelemetry::OpenTelemetrySpanExt;

pub const TRACEPARENT: &str = "traceparent";

/// The `traceparent` of `span`, when it belongs to a trace.
pub fn traceparent(span: &tracing::Span) -> Option<String> {
    let cx = span.context();
    if !cx.span().span_context().is_valid() {
        return None;
    }
    let mut carrier = HashMap::new();
    TraceContextPropagator::new().inject_context(&cx, &mut carrier);
    carrier.remove(TRACEPARENT)
}

/// The `traceparent` of the current span.
pub fn current_traceparent() -> Option<String> {
    traceparent(&tracing::Span::current())
}

/// Makes `span` part of the trace `traceparent` names; a missing or malformed value leaves
/// `span` the root of a new trace.
pub fn continue_trace(span: &tracing::Span, traceparent: Option<&str>) {
    let Some(value) = traceparent else { return };
    let carrier = HashMap::from([(TRACEPARENT.to_owned(), value.to_owned())]);
    let cx = TraceContextPropagator::new().extract(&carrier);
    if cx.span().span_context().is_valid() {
        // Fails only when the span is disabled, and then there is nothing to join.
        let _ = span.set_parent(cx);
    }
}

/// [`continue_trace`] with the `traceparent` header of a NATS message.
pub fn continue_from_headers(span: &tracing::Span, headers: Option<&HeaderMap>) {
    continue_trace(
        span,
        headers.and_then(|h| h.get(TRACEPARENT)).map(|v| v.as_str()),
    );
}

/// The trace id (32 hex digits) of a `traceparent` value.
pub fn trace_id(traceparent: &str) -> Option<&str> {
    let mut parts = traceparent.split('-');
    let (_version, id) = (parts.next()?, parts.next()?);
    (id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit())).then_some(id)
}
