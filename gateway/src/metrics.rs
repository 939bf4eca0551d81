use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};

/// The gateway's own counters (the runtime's are rendered beside them).
#[derive(Default)]
pub struct Metrics {
    /// WebSocket connections the gateway holds open.
    pub websocket_connections: AtomicI64,
    /// HTTP responses by status class: 1xx..5xx.
    pub responses: [AtomicU64; 5],
}

impl Metrics {
    pub(crate) fn count_status(&self, status: http::StatusCode) {
        let class = usize::from(status.as_u16() / 100).clamp(1, 5) - 1;
        self.responses[class].fetch_add(1, Relaxed);
    }

    pub(crate) fn render(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "# HELP denizen_gateway_websocket_connections WebSocket connections held by the gateway.\n\
             # TYPE denizen_gateway_websocket_connections gauge\n\
             denizen_gateway_websocket_connections {}",
            self.websocket_connections.load(Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP denizen_gateway_http_responses_total HTTP responses to object routes, by status class.\n\
             # TYPE denizen_gateway_http_responses_total counter"
        );
        for (i, c) in self.responses.iter().enumerate() {
            let _ = writeln!(
                out,
                "denizen_gateway_http_responses_total{{class=\"{}xx\"}} {}",
                i + 1,
                c.load(Relaxed)
            );
        }
    }
}
