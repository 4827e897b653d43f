//! W3C Trace Context sent with calls, so the service's spans join your
//! trace (see [`ClientBuilder::trace_context`](crate::ClientBuilder::trace_context)).

use std::sync::Arc;

/// The W3C Trace Context of one call: a `traceparent` header value
/// (`00-<32 hex trace id>-<16 hex parent span id>-<2 hex flags>`) and an
/// optional `tracestate`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TraceContext {
    /// The `traceparent` value.
    pub traceparent: String,
    /// The `tracestate` value, if any.
    pub tracestate: Option<String>,
}

impl TraceContext {
    /// A context with only a `traceparent`.
    ///
    /// ```
    /// let cx = receipts_sdk::TraceContext::new("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
    /// assert_eq!(cx.tracestate, None);
    /// ```
    pub fn new(traceparent: impl Into<String>) -> Self {
        Self {
            traceparent: traceparent.into(),
            tracestate: None,
        }
    }

    /// Checks the W3C format; the reason names what is wrong.
    pub(crate) fn check(&self) -> Result<(), String> {
        let tp = &self.traceparent;
        let parts: Vec<&str> = tp.split('-').collect();
        let hex = |s: &str, n: usize| {
            s.len() == n && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        };
        let well_formed = parts.len() == 4
            && hex(parts[0], 2)
            && hex(parts[1], 32)
            && hex(parts[2], 16)
            && hex(parts[3], 2);
        if !well_formed {
            return Err(format!(
                "traceparent {tp:?} is not `00-<32 lowercase hex>-<16 lowercase hex>-<2 hex>`"
            ));
        }
        if parts[0] == "ff" {
            return Err(format!("traceparent {tp:?}: version ff is invalid"));
        }
        if parts[1].bytes().all(|b| b == b'0') {
            return Err(format!("traceparent {tp:?}: the trace id is all zeros"));
        }
        if parts[2].bytes().all(|b| b == b'0') {
            return Err(format!(
                "traceparent {tp:?}: the parent span id is all zeros"
            ));
        }
        if let Some(ts) = &self.tracestate
            && !ts.bytes().all(|b| (0x20..0x7f).contains(&b))
        {
            return Err(format!("tracestate {ts:?} is not printable ASCII"));
        }
        Ok(())
    }
}

/// Called before every call and stream (re)connect for the current context.
#[derive(Clone)]
pub(crate) struct TraceSource(pub(crate) Arc<dyn Fn() -> Option<TraceContext> + Send + Sync>);

impl std::fmt::Debug for TraceSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TraceSource(..)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_well_formed_trace_contexts_pass() {
        let ok = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert_eq!(TraceContext::new(ok).check(), Ok(()));
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
        ] {
            assert!(TraceContext::new(bad).check().is_err(), "{bad:?}");
        }
        let with_state = TraceContext {
            traceparent: ok.into(),
            tracestate: Some("vendor=a\nb".into()),
        };
        assert!(with_state.check().is_err());
    }
}
