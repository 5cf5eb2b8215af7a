//! W3C trace context (`traceparent`) so one request is one trace across HTTP and NATS.

use uuid::Uuid;

/// A fresh sampled `traceparent`: `00-<trace id>-<span id>-01`.
pub fn new_traceparent() -> String {
    let trace = Uuid::new_v4().simple().to_string();
    let span = &Uuid::new_v4().simple().to_string()[..16];
    format!("00-{trace}-{span}-01")
}

/// A child of `parent`: same trace id, new span id. An invalid parent starts a new trace.
pub fn child_of(parent: Option<&str>) -> String {
    match parent.and_then(trace_id) {
        Some(trace) => {
            let span = &Uuid::new_v4().simple().to_string()[..16];
            format!("00-{trace}-{span}-01")
        }
        None => new_traceparent(),
    }
}

/// The trace id of a well-formed `traceparent`.
pub fn trace_id(traceparent: &str) -> Option<&str> {
    let mut parts = traceparent.split('-');
    let (version, trace, span, flags) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    (hex(version, 2) && hex(trace, 32) && hex(span, 16) && hex(flags, 2) && parts.next().is_none()).then_some(trace)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_child_keeps_the_trace_id() {
        let parent = new_traceparent();
        let child = child_of(Some(&parent));
        assert_eq!(trace_id(&parent), trace_id(&child));
        assert_ne!(parent, child);
        assert!(trace_id("garbage").is_none());
        assert!(trace_id(&child_of(Some("00-zz"))).is_some());
    }
}
