//! W3C trace context (<https://www.w3.org/TR/trace-context/>) on every request. A valid
//! `traceparent` continues its trace; one absent or malformed starts a fresh trace (as the
//! recommendation says: never an error). The request runs in a `request` span carrying
//! `trace_id` and `span_id` (JSON logs show them on every line it logs), a write notes its
//! changes under the trace id so that they carry it through the feed to the other regions
//! (`meridian_sync::Extras`), whose apply is logged with it; the answer carries `traceresponse`
//! (this request's span, W3C Trace Context Level 2), `x-request-id` (the same, as
//! `<trace id>-<span id>`) and the `tracestate` it came with.
//!
//! With OTLP export on (the node installs tracing-opentelemetry's layer), the span is made the
//! child of the caller's span, and its ids are the exported span's, so that what the answer
//! names is what the collector shows; without it, the ids are drawn here.

use axum::extract::Request;
use axum::http::{HeaderMap, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;
use tracing::Instrument;

/// The trace context of the request being served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceContext {
    pub trace_id: [u8; 16],
    /// This node's span for the request (the caller's span is its parent).
    pub span_id: [u8; 8],
    pub flags: u8,
}

tokio::task_local! {
    static CURRENT: TraceContext;
}

/// The trace context of the request this task serves, if any.
pub(crate) fn current() -> Option<TraceContext> {
    CURRENT.try_with(|t| *t).ok()
}

/// `traceparent`'s trace id, parent span id and flags, if it is valid: version `00` exactly as
/// specified (a later version: its first four fields, as the recommendation asks), lowercase
/// hex, neither id all zeros.
pub fn parse_traceparent(v: &str) -> Option<([u8; 16], [u8; 8], u8)> {
    let parts: Vec<&str> = v.trim().split('-').collect();
    let (version, trace, parent, flags) = match parts.as_slice() {
        [v, t, p, f] => (*v, *t, *p, *f),
        [v, t, p, f, ..] if *v != "00" => (*v, *t, *p, *f),
        _ => return None,
    };
    let hex = |s: &str, n: usize| -> Option<Vec<u8>> {
        if s.len() != 2 * n
            || !s
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return None;
        }
        (0..n)
            .map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok())
            .collect()
    };
    let version = hex(version, 1)?[0];
    if version == 0xff {
        return None;
    }
    let trace: [u8; 16] = hex(trace, 16)?.try_into().ok()?;
    let parent: [u8; 8] = hex(parent, 8)?.try_into().ok()?;
    let flags = hex(flags, 1)?[0];
    if trace == [0; 16] || parent == [0; 8] {
        return None;
    }
    Some((trace, parent, flags))
}

/// Lowercase hex, as the recommendation writes ids (one allocation, not one per byte: this
/// runs three times on every request).
fn hex(bytes: &[u8]) -> String {
    ::hex::encode(bytes)
}

fn nonzero<const N: usize>() -> [u8; N] {
    use rand::RngCore;
    let mut b = [0u8; N];
    while b == [0; N] {
        rand::thread_rng().fill_bytes(&mut b);
    }
    b
}

fn incoming(headers: &HeaderMap) -> Option<([u8; 16], [u8; 8], u8)> {
    headers
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .and_then(parse_traceparent)
}

/// The context a request is served under: its caller's trace, or a fresh one (sampled).
pub(crate) fn context_of(headers: &HeaderMap) -> TraceContext {
    let incoming = incoming(headers);
    TraceContext {
        trace_id: incoming.map_or_else(nonzero, |t| t.0),
        span_id: nonzero(),
        flags: incoming.map_or(1, |t| t.2),
    }
}

/// The middleware: outermost, so that every answer (a refusal too) names its trace.
pub(crate) async fn layer(req: Request, next: Next) -> Response {
    let state = req.headers().get("tracestate").cloned();
    let request = tracing::info_span!(
        "request",
        trace_id = tracing::field::Empty,
        span_id = tracing::field::Empty,
        method = %req.method(),
        path = %req.uri().path(),
    );
    let ctx = exported(&request, req.headers()).unwrap_or_else(|| context_of(req.headers()));
    let (trace, span) = (hex(&ctx.trace_id), hex(&ctx.span_id));
    request.record("trace_id", trace.as_str());
    request.record("span_id", span.as_str());
    let mut resp = CURRENT.scope(ctx, next.run(req).instrument(request)).await;
    let h = resp.headers_mut();
    let value = |s: String| HeaderValue::from_str(&s).expect("hex is a header value");
    h.insert(
        "traceresponse",
        value(format!("00-{trace}-{span}-{:02x}", ctx.flags)),
    );
    h.insert("x-request-id", value(format!("{trace}-{span}")));
    if let Some(s) = state {
        h.insert("tracestate", s);
    }
    resp
}

/// The ids of the span OTLP export makes of `request`, made the caller's child first; `None`
/// when export is off (no OpenTelemetry layer: the span has no such context).
fn exported(request: &tracing::Span, headers: &HeaderMap) -> Option<TraceContext> {
    use opentelemetry::trace::{
        SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState,
    };
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    let caller = incoming(headers);
    if let Some((trace, parent, flags)) = caller {
        let parent = SpanContext::new(
            TraceId::from_bytes(trace),
            SpanId::from_bytes(parent),
            TraceFlags::new(flags),
            true,
            TraceState::default(),
        );
        let _ = request.set_parent(opentelemetry::Context::new().with_remote_span_context(parent));
    }
    let cx = request.context();
    let sc = cx.span().span_context().clone();
    sc.is_valid().then(|| TraceContext {
        trace_id: sc.trace_id().to_bytes(),
        span_id: sc.span_id().to_bytes(),
        flags: caller.map_or(1, |c| c.2),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_is_parsed_as_the_recommendation_says() {
        let ok = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let (t, p, f) = parse_traceparent(ok).unwrap();
        assert_eq!(hex(&t), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(hex(&p), "00f067aa0ba902b7");
        assert_eq!(f, 1);
        // a later version may add fields; version 00 may not
        assert!(parse_traceparent(&format!("01{}-extra", &ok[2..])).is_some());
        assert!(parse_traceparent(&format!("{ok}-extra")).is_none());
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1",
            "0x-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert!(parse_traceparent(bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn a_request_without_a_valid_traceparent_starts_a_fresh_trace() {
        let mut h = HeaderMap::new();
        let a = context_of(&h);
        let b = context_of(&h);
        assert_ne!(a.trace_id, b.trace_id);
        h.insert("traceparent", HeaderValue::from_static("garbage"));
        assert_ne!(context_of(&h).trace_id, [0; 16]);
        h.insert(
            "traceparent",
            HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"),
        );
        let c = context_of(&h);
        assert_eq!(hex(&c.trace_id), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_ne!(hex(&c.span_id), "00f067aa0ba902b7", "a span of its own");
        assert_eq!(c.flags, 0, "the caller's sampling decision stays");
    }
}
