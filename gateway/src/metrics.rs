//! The gateway's own metrics, registered beside the runtime's in one `prometheus-client`
//! registry that `/metrics` encodes.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::sync::Notify;

/// The label of an HTTP response count: its status class, `"2xx"` … `"5xx"`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusClass {
    /// `1xx` to `5xx`.
    pub class: &'static str,
}

const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// The gateway's own counters.
#[derive(Debug, Default)]
pub struct Metrics {
    /// WebSocket connections the gateway holds open (whether their objects are live or not).
    pub websocket_connections: Gauge,
    /// HTTP responses to object routes by status class.
    pub http_requests: Family<StatusClass, Counter>,
    /// Sockets closed because their client stopped reading (the send backlog overflowed).
    pub backlog_overflows: Counter,
    /// Woken when the last socket closes, so shutdown waits without polling.
    all_closed: Notify,
}

impl Metrics {
    /// Adds every metric to `registry` (the gateway puts them under `denizen_gateway_`).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "websocket_connections",
            "WebSocket connections held open by the gateway",
            self.websocket_connections.clone(),
        );
        registry.register(
            "http_requests",
            "HTTP requests to objects, by response status class",
            self.http_requests.clone(),
        );
        registry.register(
            "backlog_overflows",
            "WebSockets closed with 1008 because their client stopped reading",
            self.backlog_overflows.clone(),
        );
    }

    pub(crate) fn count_status(&self, status: http::StatusCode) {
        let class = usize::from(status.as_u16() / 100).clamp(1, 5) - 1;
        self.http_requests
            .get_or_create(&StatusClass {
                class: CLASSES[class],
            })
            .inc();
    }

    pub(crate) fn socket_opened(&self) {
        self.websocket_connections.inc();
    }

    pub(crate) fn socket_closed(&self) {
        if self.websocket_connections.dec() == 1 {
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
            if self.websocket_connections.get() <= 0 {
                return;
            }
            notified.await;
        }
    }
}
