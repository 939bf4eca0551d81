use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};

use tokio::sync::Notify;

/// The gateway's own counters (rendered on `/metrics` after the runtime's).
#[derive(Default)]
pub struct Metrics {
    /// WebSocket connections the gateway holds open (whether their objects are live or not).
    pub websocket_connections: AtomicI64,
    /// HTTP responses to object routes by status class: index 0 is 1xx … index 4 is 5xx.
    pub http_requests: [AtomicU64; 5],
    /// Sockets closed because their client stopped reading (the send backlog overflowed).
    pub backlog_overflows: AtomicU64,
    /// Woken when the last socket closes, so shutdown waits without polling.
    all_closed: Notify,
}

impl Metrics {
    pub(crate) fn count_status(&self, status: http::StatusCode) {
        let class = usize::from(status.as_u16() / 100).clamp(1, 5) - 1;
        self.http_requests[class].fetch_add(1, Relaxed);
    }

    pub(crate) fn socket_opened(&self) {
        self.websocket_connections.fetch_add(1, Relaxed);
    }

    pub(crate) fn socket_closed(&self) {
        if self.websocket_connections.fetch_sub(1, Relaxed) == 1 {
            self.all_closed.notify_waiters();
        }
    }

    /// Resolves once no socket is open.
    pub(crate) async fn sockets_closed(&self) {
        loop {
            let notified = self.all_closed.notified();
            tokio::pin!(notified);
            // Register before checking, so a close between the check and the await is not missed.
            notified.as_mut().enable();
            if self.websocket_connections.load(Relaxed) <= 0 {
                return;
            }
            notified.await;
        }
    }

    pub(crate) fn render(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "# HELP denizen_gateway_websocket_connections WebSocket connections held open by the gateway.\n\
             # TYPE denizen_gateway_websocket_connections gauge\n\
             denizen_gateway_websocket_connections {}",
            self.websocket_connections.load(Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP denizen_gateway_http_requests_total HTTP requests to objects, by response status class.\n\
             # TYPE denizen_gateway_http_requests_total counter"
        );
        for (i, c) in self.http_requests.iter().enumerate() {
            let _ = writeln!(
                out,
                "denizen_gateway_http_requests_total{{class=\"{}xx\"}} {}",
                i + 1,
                c.load(Relaxed)
            );
        }
        let _ = writeln!(
            out,
            "# HELP denizen_gateway_backlog_overflows_total WebSockets closed with 1008 because their client stopped reading.\n\
             # TYPE denizen_gateway_backlog_overflows_total counter\n\
             denizen_gateway_backlog_overflows_total {}",
            self.backlog_overflows.load(Relaxed)
        );
    }
}
